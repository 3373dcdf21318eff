"""Whisper checkpoints both ways against transformers' own WhisperForConditionalGeneration
(random-initialised by transformers, saved sharded; no download): the logits within 1e-4,
our export loads in transformers with the same logits, and checkpoints we cannot hold say
why."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import pretrained
from attention_jax.models.whisper import Whisper

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_whisper(seed=0, **overrides):
  torch.manual_seed(seed)
  config = transformers.WhisperConfig(**{
      "vocab_size": 96, "num_mel_bins": 80, "d_model": 32, "encoder_layers": 2,
      "decoder_layers": 3, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
      "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_source_positions": 40,
      "max_target_positions": 24, "dropout": 0.0, "attention_dropout": 0.0,
      "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
      "suppress_tokens": [], "begin_suppress_tokens": [], "init_std": 0.1, **overrides})
  model = transformers.WhisperForConditionalGeneration(config).eval()
  with torch.no_grad():  # transformers initialises the biases and norms plainly: vary them
    for name, param in model.named_parameters():
      if name.endswith(("bias", "layer_norm.weight")) and "embed_positions" not in name:
        param.add_(0.1 * torch.randn_like(param))
  return model


def _inputs(hf):
  rng = np.random.default_rng(0)
  frames = 2 * hf.config.max_source_positions
  features = rng.standard_normal((2, hf.config.num_mel_bins, frames)).astype(np.float32)
  tokens = rng.integers(0, hf.config.vocab_size, (2, 9)).astype(np.int64)
  return features, tokens


def _hf_logits(hf, features, tokens):
  with torch.no_grad():
    return hf(input_features=torch.tensor(features),
              decoder_input_ids=torch.tensor(tokens)).logits.numpy()


def _our_logits(model, params, features, tokens):
  return np.asarray(model.apply({"params": params}, jnp.asarray(features.transpose(0, 2, 1)),
                                jnp.asarray(tokens, jnp.int32)))


def test_whisper_checkpoints_load_and_export_as_transformers_reads_them(tmp_path):
  hf = _hf_whisper()
  hf.save_pretrained(tmp_path / "hf", max_shard_size="200KB")
  assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
  model, params, _ = pretrained.load(str(tmp_path / "hf"))
  assert isinstance(model, Whisper) and model.config.decoder_depth == 3
  features, tokens = _inputs(hf)
  want = _hf_logits(hf, features, tokens)
  assert want.std() > 0.5  # not a test that uniform logits could pass
  got = _our_logits(model, params, features, tokens)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

  pretrained.export(model, params, str(tmp_path / "ours"), max_shard_bytes=100_000)
  back = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
  np.testing.assert_allclose(_hf_logits(back, features, tokens), got, atol=1e-4, rtol=1e-4)
  # In bfloat16 the sinusoid table is rounded by up to 2e-3: it still loads.
  pretrained.export(model, params, str(tmp_path / "bf16"), dtype="bfloat16")
  half, _, _ = pretrained.load(str(tmp_path / "bf16"))
  assert half.config.param_dtype == jnp.bfloat16


def test_whisper_checkpoints_we_cannot_hold_say_why(tmp_path):
  hf = _hf_whisper(decoder_ffn_dim=48)
  hf.save_pretrained(tmp_path / "ffn")
  with pytest.raises(ValueError, match="encoder_ffn_dim=64 but decoder_ffn_dim=48"):
    pretrained.load(str(tmp_path / "ffn"))
  hf = _hf_whisper()
  with torch.no_grad():
    hf.model.encoder.embed_positions.weight.add_(0.5)
  hf.save_pretrained(tmp_path / "positions")
  with pytest.raises(ValueError, match="embed_positions.weight is not Whisper's sinusoid"):
    pretrained.load(str(tmp_path / "positions"))
  config = json.loads((tmp_path / "positions" / "config.json").read_text())
  assert config["model_type"] == "whisper"
  _hf_whisper(tie_word_embeddings=False).save_pretrained(tmp_path / "untied")
  with pytest.raises(ValueError, match="tie_word_embeddings=false"):
    pretrained.load(str(tmp_path / "untied"))


def test_exported_special_ids_are_those_of_each_whisper_vocabulary():
  from attention_jax import models
  from attention_jax.pretrained.whisper_format import WhisperFormat
  ids = lambda vocab: WhisperFormat.config(models.create("whisper-tiny", vocab_size=vocab))
  assert ids(51865)["eos_token_id"] == 50257 and ids(51865)["decoder_start_token_id"] == 50258
  assert ids(51864)["eos_token_id"] == 50256 and ids(51864)["decoder_start_token_id"] == 50257
  assert ids(96)["eos_token_id"] == 95


def test_greedy_transcription_equals_transformers_generate(tmp_path):
  """The forced prompt (start, language, task, no-timestamps tokens), suppressed tokens
  and begin-suppressed ones, 12 new tokens: the same tokens as transformers' generate."""
  from attention_jax.models import whisper_decoding
  hf = _hf_whisper(seed=3, init_std=0.3)  # a random model that does not repeat one token
  hf.save_pretrained(tmp_path / "hf")
  model, params, _ = pretrained.load(str(tmp_path / "hf"))
  features, _ = _inputs(hf)
  prompt = np.array([[1, 10, 11, 12]] * 2)
  suppress, begin_suppress = (82, 84), (2, 12)  # each chosen where it is not suppressed
  with torch.no_grad():
    want = hf.generate(input_features=torch.tensor(features),
                       decoder_input_ids=torch.tensor(prompt), max_new_tokens=12,
                       do_sample=False, num_beams=1, suppress_tokens=list(suppress),
                       begin_suppress_tokens=list(begin_suppress)).numpy()
  got = whisper_decoding.greedy(model, params, features.transpose(0, 2, 1), prompt,
                                max_new_tokens=12, eos_id=2, suppress=suppress,
                                begin_suppress=begin_suppress)
  assert len(set(want.ravel().tolist())) > 2  # not one token repeated
  np.testing.assert_array_equal(np.asarray(got), want[:, -12:])
  # A row that emits the end token (80, row 0's 3rd) is finished: pad tokens follow.
  with torch.no_grad():
    want = hf.generate(input_features=torch.tensor(features),
                       decoder_input_ids=torch.tensor(prompt), max_new_tokens=12,
                       do_sample=False, num_beams=1, suppress_tokens=list(suppress),
                       begin_suppress_tokens=list(begin_suppress), eos_token_id=80,
                       pad_token_id=0).numpy()
  got = whisper_decoding.greedy(model, params, features.transpose(0, 2, 1), prompt,
                                max_new_tokens=12, eos_id=80, suppress=suppress,
                                begin_suppress=begin_suppress)
  assert (want[0, -10:] == 0).all() and want[1, -1] != 0
  assert got[0, 2] == 80  # we keep the end token; transformers' Whisper returns it as pad
  np.testing.assert_array_equal(np.where(np.asarray(got) == 80, 0, got), want[:, -12:])


def test_timestamp_rules_equal_transformers_whisper_timestamp_processor():
  """Pairs, monotonic timestamps, the first token and the probability-mass rule: the same
  masked logits as transformers' WhisperTimeStampLogitsProcessor on random histories."""
  from transformers import GenerationConfig
  from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor
  from attention_jax.models.whisper_decoding import timestamp_rules
  vocab, begin, end, no_timestamps = 40, 25, 20, 24
  config = GenerationConfig(no_timestamps_token_id=no_timestamps, eos_token_id=end,
                            max_initial_timestamp_index=5)
  rng = np.random.default_rng(0)
  for trial in range(120):
    count = int(rng.integers(0, 6))
    history = rng.choice(np.r_[np.arange(end), np.arange(begin, vocab)], size=(3, count))
    history = np.sort(history, axis=1) if trial % 3 == 0 else history
    logits = 3 * rng.standard_normal((3, vocab)).astype(np.float32)
    logits[:, begin:] += 2.0 * (trial % 2)  # sometimes the timestamps' mass wins
    processor = WhisperTimeStampLogitsProcessor(config, begin_index=3)
    ids = torch.tensor(np.concatenate([np.ones((3, 3), np.int64), history], axis=1))
    want = processor(ids, torch.tensor(logits)).numpy()
    padded = np.zeros((3, 8), np.int64)
    padded[:, :count] = history
    got = np.asarray(timestamp_rules(
        jnp.asarray(logits), jnp.asarray(padded), count, timestamp_begin=begin, eos_id=end,
        no_timestamps_id=no_timestamps, max_initial_timestamp=5))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"trial {trial}")
    np.testing.assert_allclose(got[~np.isinf(got)], want[~np.isinf(want)], rtol=1e-6)


def test_greedy_decoding_with_timestamps_equals_a_transformers_loop(tmp_path):
  """Greedy decoding under the timestamp rules: the tokens of transformers' model stepped
  greedily through its own WhisperTimeStampLogitsProcessor."""
  from transformers import GenerationConfig
  from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor
  from attention_jax.models import whisper_decoding
  hf = _hf_whisper(seed=3, init_std=0.3)
  hf.save_pretrained(tmp_path / "hf")
  model, params, _ = pretrained.load(str(tmp_path / "hf"))
  features, _ = _inputs(hf)
  prompt = np.array([[1, 10, 11]] * 2)
  processor = WhisperTimeStampLogitsProcessor(GenerationConfig(
      no_timestamps_token_id=60, eos_token_id=2, max_initial_timestamp_index=5), begin_index=3)
  sequence = torch.tensor(prompt)
  with torch.no_grad():
    for _ in range(10):
      logits = hf(input_features=torch.tensor(features), decoder_input_ids=sequence).logits
      chosen = processor(sequence, logits[:, -1]).argmax(-1, keepdim=True)
      sequence = torch.cat([sequence, chosen], dim=1)
  want = sequence[:, 3:].numpy()
  assert (want >= 61).any() and (want < 61).any()  # timestamps and text
  got = whisper_decoding.greedy(model, params, features.transpose(0, 2, 1), prompt,
                                max_new_tokens=10, eos_id=2, timestamps=(61, 60, 5))
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("beams,eos", [(3, 2), (4, 80)])
def test_beam_search_equals_transformers_generate(tmp_path, beams, eos):
  """Beam search with the forced prompt and suppress rules: transformers' generate with
  num_beams picks the same sequence, with the same summed log-probability."""
  from attention_jax.models import whisper_decoding
  hf = _hf_whisper(seed=3, init_std=0.3)
  hf.save_pretrained(tmp_path / "hf")
  model, params, _ = pretrained.load(str(tmp_path / "hf"))
  features, _ = _inputs(hf)
  prompt = np.array([[1, 10, 11, 12]] * 2)
  suppress, begin_suppress = (82, 84), (2, 12)
  with torch.no_grad():
    out = hf.generate(input_features=torch.tensor(features),
                      decoder_input_ids=torch.tensor(prompt), max_new_tokens=12,
                      do_sample=False, num_beams=beams, suppress_tokens=list(suppress),
                      begin_suppress_tokens=list(begin_suppress), eos_token_id=eos,
                      pad_token_id=0, length_penalty=1.0, return_dict_in_generate=True,
                      output_scores=True)
  want = out.sequences.numpy()[:, prompt.shape[1]:]
  got = whisper_decoding.beam_search(model, params, features.transpose(0, 2, 1), prompt,
                                     beam_size=beams, max_new_tokens=12, eos_id=eos,
                                     suppress=suppress, begin_suppress=begin_suppress)
  tokens = np.asarray(got.tokens)[:, :want.shape[1]]
  np.testing.assert_array_equal(np.where(tokens == eos, 0, tokens),
                                np.where(want == eos, 0, want))
  lengths = np.array([list(row).index(eos) + 1 if eos in row else 12 for row in tokens])
  np.testing.assert_allclose(np.asarray(got.sum_logprob) / lengths,
                             out.sequences_scores.numpy(), rtol=1e-4)
  greedy = whisper_decoding.greedy(model, params, features.transpose(0, 2, 1), prompt,
                                   max_new_tokens=12, eos_id=eos, suppress=suppress,
                                   begin_suppress=begin_suppress)
  assert (np.asarray(greedy) != np.asarray(got.tokens)).any()  # the beams found another
