"""Named architectures: `create(name, **overrides)` and `param_count(name, **overrides)`.

Each standard preset has exactly the architecture, and so the parameter count, of the
reference implementation named beside it (pinned in tests/models/test_presets.py).
"""

from __future__ import annotations

import dataclasses
import typing

import jax
import numpy as np

from attention_jax import kernels
from attention_jax.kernels.positional import RopeScaling
from attention_jax.layers import moe
from attention_jax.layers.config import TransformerConfig
from attention_jax.models.bert import Bert
from attention_jax.models.deepseek import Deepseek
from attention_jax.models.encoder_decoder import EncoderDecoder
from attention_jax.models.gemma import Gemma, gemma_layer_types
from attention_jax.models.gpt import GPT
from attention_jax.models.llama import Llama
from attention_jax.models.mixtral import Mixtral
from attention_jax.models.transformer_xl import TransformerXL
from attention_jax.models.vit import ViT
from attention_jax.models.whisper import Whisper


@dataclasses.dataclass(frozen=True)
class Preset:
  family: type  # the Flax module; its `config` field's type is the config class
  config: TransformerConfig
  reference: str


def _preset(family, reference: str, **fields) -> Preset:
  return Preset(family, config_class(family)(**fields), reference)


def config_class(family) -> type:
  """The TransformerConfig subclass a model family is built from."""
  return typing.get_type_hints(family)["config"]


_BERT_BASE = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)
_GPT2 = dict(vocab_size=50257, max_len=1024, dropout_rate=0.1, attention_dropout_rate=0.1)
_LLAMA3_ROPE = dict(rotary_base=500000.0, max_len=131072, vocab_size=128256)
_QWEN25 = dict(vocab_size=151936, max_len=32768, num_kv_heads=2, ln_eps=1e-6,
               rotary_base=1e6, qkv_bias=True, tie_embeddings=True)
_QWEN3 = dict(vocab_size=151936, max_len=40960, num_kv_heads=8, head_dim=128, ln_eps=1e-6,
              rotary_base=1e6, qk_norm=True)

_DEEPSEEK = dict(max_len=163840, rotary_base=10000.0)
_WHISPER = dict(vocab_size=51865, max_len=448, n_mels=80, max_source_positions=1500)


def _deepseek_yarn(mscale: float) -> RopeScaling:
  """DeepSeek's YaRN: 4k stretched 40 times, mscale = mscale_all_dim (V2-Lite 0.707, V3 1)."""
  return RopeScaling("yarn", 40.0, original_max_len=4096, beta_fast=32.0, beta_slow=1.0,
                     mscale=mscale, mscale_all_dim=mscale)


# Gemma's sliding windows are transformers' sliding_window - 1 (keys within that distance).
_GEMMA2 = dict(vocab_size=256000, max_len=8192, head_dim=256, query_pre_attn_scalar=256,
               attn_logits_soft_cap=50.0, final_logits_soft_cap=30.0, local_window=4095)
_GEMMA3 = dict(vocab_size=262144, max_len=32768, num_kv_heads=1, head_dim=256,
               query_pre_attn_scalar=256, qk_norm=True, local_window=511, rotary_base=1e6,
               local_rotary_base=10000.0)


def _llama3_scaling(factor: float) -> RopeScaling:
  return RopeScaling("llama3", factor, low_freq_factor=1.0, high_freq_factor=4.0,
                     original_max_len=8192)


PRESETS: dict[str, Preset] = {
    "bert-base": _preset(Bert, "google-research/bert BERT-Base, uncased (HF BertModel with "
                         "pooler)", **_BERT_BASE),
    "bert-large": _preset(Bert, "google-research/bert BERT-Large, uncased (HF BertModel)",
                          width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "minilm-l6": _preset(Bert, "sentence-transformers/all-MiniLM-L6-v2 (HF BertModel)",
                         width=384, depth=6, num_heads=12, mlp_dim=1536),
    "gpt2-small": _preset(GPT, "openai/gpt-2 124M (HF GPT2Model, tied LM head)", **_GPT2,
                          width=768, depth=12, num_heads=12, mlp_dim=3072),
    "gpt2-medium": _preset(GPT, "openai/gpt-2 355M (HF GPT2Model, tied LM head)", **_GPT2,
                           width=1024, depth=24, num_heads=16, mlp_dim=4096),
    "transformer-base": _preset(
        EncoderDecoder, "Vaswani et al. 2017 base: fairseq transformer_wmt_en_de with "
        "--share-all-embeddings and the paper's 37,000-token joint BPE vocabulary",
        vocab_size=37000, width=512, depth=6, decoder_depth=6, num_heads=8, mlp_dim=2048,
        dropout_rate=0.1),
    "transformer-xl-base": _preset(
        TransformerXL, "kimiyoung/transformer-xl pytorch run_wt103_base.sh (WikiText-103 "
        "base, 151M)", vocab_size=267735, width=410, depth=16, num_heads=10, head_dim=41,
        mlp_dim=2100, mem_len=150, cutoffs=(20000, 40000, 200000)),
    "vit-ti16": _preset(ViT, "ViT-Ti/16 at 224px, ImageNet-1k head (timm "
                        "vit_tiny_patch16_224)", width=192, depth=12, num_heads=3, mlp_dim=768),
    "vit-b16": _preset(ViT, "ViT-B/16 at 224px, ImageNet-1k head (Dosovitskiy et al.; timm "
                       "vit_base_patch16_224)", **_BERT_BASE),
    # Llama-style decoders: each from the published config.json of the model named.
    "llama-2-7b": _preset(Llama, "meta-llama/Llama-2-7b-hf", vocab_size=32000, max_len=4096,
                          width=4096, depth=32, num_heads=32, mlp_dim=11008),
    "llama-3.1-8b": _preset(Llama, "meta-llama/Llama-3.1-8B", **_LLAMA3_ROPE, width=4096,
                            depth=32, num_heads=32, num_kv_heads=8, mlp_dim=14336,
                            rope_scaling=_llama3_scaling(8.0)),
    "llama-3.2-1b": _preset(Llama, "meta-llama/Llama-3.2-1B (tied head)", **_LLAMA3_ROPE,
                            width=2048, depth=16, num_heads=32, num_kv_heads=8, mlp_dim=8192,
                            rope_scaling=_llama3_scaling(32.0), tie_embeddings=True),
    "llama-3.2-3b": _preset(Llama, "meta-llama/Llama-3.2-3B (tied head)", **_LLAMA3_ROPE,
                            width=3072, depth=28, num_heads=24, num_kv_heads=8, mlp_dim=8192,
                            rope_scaling=_llama3_scaling(32.0), tie_embeddings=True),
    "mistral-7b": _preset(Llama, "mistralai/Mistral-7B-v0.1 (sliding window 4096)",
                          vocab_size=32000, max_len=32768, width=4096, depth=32, num_heads=32,
                          num_kv_heads=8, mlp_dim=14336, local_window=4095),
    "qwen2.5-0.5b": _preset(Llama, "Qwen/Qwen2.5-0.5B (Q/K/V bias, tied head)", **_QWEN25,
                            width=896, depth=24, num_heads=14, mlp_dim=4864),
    "qwen2.5-1.5b": _preset(Llama, "Qwen/Qwen2.5-1.5B (Q/K/V bias, tied head)", **_QWEN25,
                            width=1536, depth=28, num_heads=12, mlp_dim=8960),
    "qwen3-0.6b": _preset(Llama, "Qwen/Qwen3-0.6B (QK-norm, head_dim 128, tied head)",
                          **_QWEN3, width=1024, depth=28, num_heads=16, mlp_dim=3072,
                          tie_embeddings=True),
    "qwen3-1.7b": _preset(Llama, "Qwen/Qwen3-1.7B (QK-norm, head_dim 128, tied head)",
                          **_QWEN3, width=2048, depth=28, num_heads=16, mlp_dim=6144,
                          tie_embeddings=True),
    "qwen3-4b": _preset(Llama, "Qwen/Qwen3-4B (QK-norm, head_dim 128, tied head)", **_QWEN3,
                        width=2560, depth=36, num_heads=32, mlp_dim=9728, tie_embeddings=True),
    "qwen3-8b": _preset(Llama, "Qwen/Qwen3-8B (QK-norm, head_dim 128)", **_QWEN3, width=4096,
                        depth=36, num_heads=32, mlp_dim=12288),
    "gemma-2-2b": _preset(Gemma, "google/gemma-2-2b (soft-capping, alternating sliding "
                          "window 4096)", **_GEMMA2, width=2304, depth=26, num_heads=8,
                          num_kv_heads=4, mlp_dim=9216, layer_types=gemma_layer_types(26, 2)),
    "gemma-2-9b": _preset(Gemma, "google/gemma-2-9b (soft-capping, alternating sliding "
                          "window 4096)", **_GEMMA2, width=3584, depth=42, num_heads=16,
                          num_kv_heads=8, mlp_dim=14336, layer_types=gemma_layer_types(42, 2)),
    "gemma-3-270m": _preset(Gemma, "google/gemma-3-270m (QK-norm, 5 sliding (512) : 1 full)",
                            **_GEMMA3, width=640, depth=18, num_heads=4, mlp_dim=2048,
                            layer_types=gemma_layer_types(18, 6)),
    "gemma-3-1b": _preset(Gemma, "google/gemma-3-1b-pt (QK-norm, 5 sliding (512) : 1 full)",
                          **_GEMMA3, width=1152, depth=26, num_heads=4, mlp_dim=6912,
                          layer_types=gemma_layer_types(26, 6)),
    "mixtral-8x7b": _preset(Mixtral, "mistralai/Mixtral-8x7B-v0.1 (8 experts, 2 per token; "
                            "12.9B of the 46.7B parameters active per token)",
                            vocab_size=32000, max_len=32768, width=4096, depth=32,
                            num_heads=32, num_kv_heads=8, mlp_dim=14336, rotary_base=1e6),
    "qwen3-30b-a3b": _preset(Mixtral, "Qwen/Qwen3-30B-A3B (128 experts, 8 per token, "
                             "renormalised; QK-norm; 3.3B of the 30.5B parameters active)",
                             **{**_QWEN3, "num_kv_heads": 4}, width=2048, depth=48,
                             num_heads=32, mlp_dim=6144, expert_mlp_dim=768, num_experts=128,
                             experts_per_token=8, norm_topk_prob=True),
    "deepseek-v2-lite": _preset(
        Deepseek, "deepseek-ai/DeepSeek-V2-Lite (latent attention; 64 experts, 6 per token, "
        "2 shared, softmax routing; 2.7B of the 15.7B parameters active, embeddings "
        "counted; the model card's 2.4B)", **_DEEPSEEK,
        vocab_size=102400, width=2048, depth=27, num_heads=16, mlp_dim=10944,
        q_lora_rank=None, rope_scaling=_deepseek_yarn(0.707), num_experts=64,
        experts_per_token=6, expert_mlp_dim=1408, n_shared_experts=2, first_k_dense_replace=1,
        norm_topk_prob=False),
    "deepseek-v3": _preset(
        Deepseek, "deepseek-ai/DeepSeek-V3 (latent attention; 256 experts, 8 per token from 4 "
        "of 8 groups, 1 shared, sigmoid routing with the correction bias; 37.6B of the 671B "
        "parameters active; without the multi-token-prediction layer)", **_DEEPSEEK,
        vocab_size=129280, width=7168, depth=61, num_heads=128, mlp_dim=18432,
        rope_scaling=_deepseek_yarn(1.0), num_experts=256, experts_per_token=8,
        expert_mlp_dim=2048, n_shared_experts=1, first_k_dense_replace=3, n_group=8,
        topk_group=4, router_scoring="sigmoid", router_correction_bias=True,
        routed_scaling_factor=2.5, norm_topk_prob=True),
    "gpt-oss-20b": _preset(
        Mixtral, "openai/gpt-oss-20b in float weights (32 experts, 4 per token, with biases "
        "and the clamped SwiGLU; learned sinks; window 128 on alternate layers; 4.2B of the "
        "20.9B parameters active, the model card's 3.6B without the token table)",
        vocab_size=201088, max_len=131072, width=2880, depth=24, num_heads=64, num_kv_heads=8,
        head_dim=64, mlp_dim=2880, ln_eps=1e-5, qkv_bias=True, out_bias=True, mlp_bias=True,
        learned_sinks=True, layer_types=gemma_layer_types(24, 2), local_window=127,
        rotary_base=150000.0, rope_scaling=RopeScaling(
            "yarn", 32.0, original_max_len=4096, beta_fast=32.0, beta_slow=1.0,
            truncate=False),
        num_experts=32, experts_per_token=4, norm_topk_prob=True, router_bias=True,
        swiglu_limit=7.0),
    "smollm2-135m": _preset(Llama, "HuggingFaceTB/SmolLM2-135M (tied head)", vocab_size=49152,
                            max_len=8192, width=576, depth=30, num_heads=9, num_kv_heads=3,
                            mlp_dim=1536, rotary_base=100000.0, tie_embeddings=True),
    "tinyllama-1.1b": _preset(Llama, "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T",
                              vocab_size=32000, max_len=2048, width=2048, depth=22,
                              num_heads=32, num_kv_heads=4, mlp_dim=5632),
    # Tiny presets for tests and laptops.
    "bert-tiny": _preset(Bert, "test size", vocab_size=128, max_len=64, width=32, depth=2,
                         num_heads=4, mlp_dim=64),
    "gpt-tiny": _preset(GPT, "test size", vocab_size=128, max_len=64, width=32, depth=2,
                        num_heads=4, mlp_dim=64),
    "deepseek-tiny": _preset(Deepseek, "test size", vocab_size=128, max_len=64, width=32,
                             depth=2, num_heads=4, mlp_dim=64, kv_lora_rank=16, q_lora_rank=12,
                             qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6),
    "gemma-tiny": _preset(Gemma, "test size", vocab_size=128, max_len=64, width=32, depth=4,
                          num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=64,
                          local_window=7, layer_types=gemma_layer_types(4, 2),
                          attn_logits_soft_cap=50.0, final_logits_soft_cap=30.0),
    "mixtral-tiny": _preset(Mixtral, "test size", vocab_size=128, max_len=64, width=32,
                            depth=2, num_heads=4, num_kv_heads=2, mlp_dim=24, num_experts=4),
    "llama-tiny": _preset(Llama, "test size", vocab_size=128, max_len=64, width=32, depth=2,
                          num_heads=4, num_kv_heads=2, mlp_dim=64),
    "transformer-tiny": _preset(EncoderDecoder, "test size", vocab_size=128, max_len=64,
                                width=32, depth=2, decoder_depth=2, num_heads=4, mlp_dim=64),
    "whisper-tiny": _preset(Whisper, "openai/whisper-tiny", **_WHISPER, width=384, depth=4,
                            num_heads=6, mlp_dim=1536),
    "whisper-base": _preset(Whisper, "openai/whisper-base", **_WHISPER, width=512, depth=6,
                            num_heads=8, mlp_dim=2048),
    "whisper-small": _preset(Whisper, "openai/whisper-small", **_WHISPER, width=768,
                             depth=12, num_heads=12, mlp_dim=3072),
    "whisper-medium": _preset(Whisper, "openai/whisper-medium", **_WHISPER, width=1024,
                              depth=24, num_heads=16, mlp_dim=4096),
    "whisper-large-v3": _preset(Whisper, "openai/whisper-large-v3 (128 mel bins)",
                                **{**_WHISPER, "vocab_size": 51866, "n_mels": 128}, width=1280,
                                depth=32, num_heads=20, mlp_dim=5120),
    "whisper-test-tiny": _preset(Whisper, "test size", vocab_size=128, max_len=32, width=32,
                                 depth=2, num_heads=4, mlp_dim=64, max_source_positions=64),
    "transformer-xl-tiny": _preset(TransformerXL, "test size", vocab_size=128, width=32,
                                   depth=2, num_heads=4, mlp_dim=64, mem_len=16,
                                   cutoffs=(32, 64)),
    "vit-tiny": _preset(ViT, "test size", num_classes=10, image_size=16, channels=1,
                        patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64),
}


def names() -> list[str]:
  return sorted(PRESETS)


def _hashable(value):
  return tuple(value) if isinstance(value, list) else value


def create(name: str, **overrides):
  """The Flax module of preset `name`, with any config field overridden (kernel="flash")."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(names())}.")
  preset = PRESETS[name]
  try:
    config = preset.config.replace(**{k: _hashable(v) for k, v in overrides.items()})
  except ValueError as e:
    raise ValueError(f"preset {name!r} (a {preset.family.__name__}): {e}") from None
  kernels.get(config.kernel)  # unknown names fail here, listing the valid ones
  return preset.family(config)


def active_param_count(name: str, **overrides) -> int:
  """Parameters one token uses in preset `name`: all of them, less the routed experts a
  mixture's tokens do not choose (`moe.unchosen_expert_params`)."""
  return param_count(name, **overrides) - moe.unchosen_expert_params(
      create(name, **overrides).config)


def param_count(name: str, **overrides) -> int:
  """Number of parameters of preset `name`, from shapes alone (no weights allocated)."""
  model = create(name, **overrides)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs()))
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"])))
