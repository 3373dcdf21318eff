"""Every preset's parameter count, pinned to its published reference implementation."""

import pytest

from attention_jax import models

PUBLISHED = {  # the reference each preset reproduces: see models.PRESETS[name].reference
    "bert-base": 109_482_240,  # HF BertModel (bert-base-uncased), pooler included
    "bert-large": 335_141_888,
    "minilm-l6": 22_713_216,  # all-MiniLM-L6-v2 (its safetensors adds a 512-entry buffer)
    "gpt2-small": 124_439_808,
    "gpt2-medium": 354_823_168,
    "transformer-base": 63_082_496,  # 37k shared vocab: 18.9M embeddings + 44.1M layers
    "transformer-xl-base": 151_107_538,  # official PyTorch n_all_param for WT103 base
    "vit-ti16": 5_717_416,
    "vit-b16": 86_567_656,
    # Llama-style decoders: the counts their Hugging Face model cards and safetensors give
    "llama-2-7b": 6_738_415_616,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,  # tied head
    "llama-3.2-3b": 3_212_749_824,  # tied head
    "mistral-7b": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,  # Q/K/V biases, tied head
    "qwen2.5-1.5b": 1_543_714_304,
    # Qwen3 (model cards: 0.6B, 1.7B, 4.0B, 8.2B): the counts of transformers'
    # Qwen3ForCausalLM built on the meta device from the published config.json values
    "qwen3-0.6b": 596_049_920,  # tied head
    "qwen3-1.7b": 1_720_574_976,  # tied head
    "qwen3-4b": 4_022_468_096,  # tied head
    "qwen3-8b": 8_190_735_360,
    # Gemma 2 and 3 (model cards: 2.61B, 9.24B, 268M, 1B): transformers' Gemma2ForCausalLM and
    # Gemma3ForCausalLM on the meta device from the published config.json values; tied heads
    "gemma-2-2b": 2_614_341_888,
    "gemma-2-9b": 9_241_705_984,
    "gemma-3-270m": 268_098_176,
    "gemma-3-1b": 999_885_952,
    # Mixtral (model card: 46.7B, 12.9B active): transformers' MixtralForCausalLM on the meta
    # device from the published config.json values
    "mixtral-8x7b": 46_702_792_704,
    # Qwen3-MoE and DeepSeek (model cards: 30.5B, 15.7B, 671B): transformers'
    # Qwen3MoeForCausalLM, DeepseekV2ForCausalLM and DeepseekV3ForCausalLM on the meta device
    # from the published config.json values; DeepSeek-V3's adds the 58 MoE layers' 256-entry
    # correction biases, which transformers keeps as buffers (671_026_404_352 + 14_848)
    "qwen3-30b-a3b": 30_532_122_624,
    "deepseek-v2-lite": 15_706_484_224,
    "deepseek-v3": 671_026_419_200,
    # GPT-OSS (model card: 21B): transformers' GptOssForCausalLM on the meta device from the
    # published config.json values, weights in float (the published experts are MXFP4)
    "gpt-oss-20b": 20_914_757_184,
    "smollm2-135m": 134_515_008,
    "tinyllama-1.1b": 1_100_048_384,
    # tiny presets: pinned so that architecture changes are noticed
    "bert-tiny": 24_416,
    "deepseek-tiny": 27_224,
    "gemma-tiny": 53_792,
    "gpt-tiny": 23_296,
    "llama-tiny": 26_784,
    "mixtral-tiny": 33_184,
    "transformer-tiny": 46_848,
    # Whisper (model cards: 39M, 74M, 244M, 769M, 1.55B): transformers'
    # WhisperForConditionalGeneration on the meta device from the published configs, less
    # its encoder's frozen 1500-position sinusoid table, which we compute
    # (tests/models/test_whisper.py checks these against transformers itself)
    "whisper-tiny": 37_184_640,
    "whisper-base": 71_825_920,
    "whisper-small": 240_582_912,
    "whisper-medium": 762_321_920,
    "whisper-large-v3": 1_541_570_560,
    "whisper-test-tiny": 58_624,
    "transformer-xl-tiny": 23_234,
    "vit-tiny": 18_602,
}


def test_every_preset_is_pinned():
  assert set(PUBLISHED) == set(models.names())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count(name):
  assert models.param_count(name) == PUBLISHED[name]


ACTIVE = {  # parameters a token uses: the model cards' 12.9B, 3.3B, 2.4B (see its preset), 37B
    "mixtral-8x7b": 12_879_925_248,
    "qwen3-30b-a3b": 3_353_032_704,
    "deepseek-v2-lite": 2_661_150_208,
    "deepseek-v3": 37_552_297_472,
    "gpt-oss-20b": 4_187_440_704,  # the card's 3.6B leaves out the 579M-entry token table
    "mixtral-tiny": 23_968,  # 2 layers x 2 unchosen experts x 3 x 32 x 24 fewer
}


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_active_parameter_count_of_each_mixture(name):
  assert models.active_param_count(name) == ACTIVE[name]
  assert models.active_param_count("llama-tiny") == PUBLISHED["llama-tiny"]


def test_overrides_and_errors():
  assert models.create("gpt-tiny", kernel="flash").config.kernel == "flash"
  assert models.param_count("gpt-tiny", num_kv_heads=1) < PUBLISHED["gpt-tiny"]
  with pytest.raises(ValueError, match="unknown preset 'gpt3'; valid presets: bert-base"):
    models.create("gpt3")
  with pytest.raises(ValueError, match="GPTConfig has no field\\(s\\) \\['widht'\\]"):
    models.create("gpt-tiny", widht=64)
  with pytest.raises(ValueError, match="unknown attention kernel 'flsh'"):
    models.create("bert-base", kernel="flsh")
