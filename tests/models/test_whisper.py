"""Whisper: the presets are transformers' architectures (counted on the meta device), the
encoder's positions are Whisper's sinusoids, any kernel and the stacked layout give the
same logits, the cached decoder continues teacher forcing, and wrong features are named.
(Parity with transformers' weights: tests/pretrained/test_whisper_parity.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import models
from attention_jax.models import layouts
from attention_jax.models.generation import init_cache
from attention_jax.models.whisper import whisper_sinusoids


@pytest.mark.parametrize("name", ["whisper-tiny", "whisper-base", "whisper-small",
                                  "whisper-medium", "whisper-large-v3"])
def test_presets_are_transformers_whisper(name):
  import torch
  from transformers import WhisperConfig, WhisperForConditionalGeneration
  c = models.create(name).config
  published = WhisperConfig(  # the fields of openai/<name>'s config.json
      vocab_size=c.vocab_size, num_mel_bins=c.n_mels, d_model=c.width,
      encoder_layers=c.depth, decoder_layers=c.depth, encoder_attention_heads=c.num_heads,
      decoder_attention_heads=c.num_heads, encoder_ffn_dim=c.mlp_dim,
      decoder_ffn_dim=c.mlp_dim, max_source_positions=1500, max_target_positions=448)
  with torch.device("meta"):
    reference = WhisperForConditionalGeneration(published)
  counted = sum(p.numel() for p in reference.parameters())
  # transformers keeps the encoder's sinusoids as a frozen [1500, width] parameter
  assert models.param_count(name) + 1500 * c.width == counted


def test_encoder_positions_are_whispers_sinusoids():
  """Equal to transformers' (Whisper's) table, which float32 computes up to 1.1e-4 off at
  the late positions (ours: float64), and within 1e-5 below position 100."""
  from transformers.models.whisper.modeling_whisper import sinusoids
  for width in (384, 512, 1280):
    theirs, ours = sinusoids(1500, width).numpy(), whisper_sinusoids(1500, width)
    np.testing.assert_allclose(ours, theirs, atol=1.2e-4)
    np.testing.assert_allclose(ours[:100], theirs[:100], atol=1e-5)


def _model_and_inputs(**overrides):
  model = models.create("whisper-test-tiny", **overrides)
  features = jax.random.normal(jax.random.key(0), (2, 60, 80))
  tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 128)
  params = model.init(jax.random.key(2), features, tokens)["params"]
  return model, params, features, tokens


def test_kernels_and_the_stacked_layout_give_the_same_logits():
  model, params, features, tokens = _model_and_inputs()
  logits = model.apply({"params": params}, features, tokens)
  assert logits.shape == (2, 7, 128)
  assert "bias" not in params["encoder_blocks_0"]["attention"]["key"]  # Whisper's keys
  assert "bias" not in params["decoder_blocks_1"]["cross_attention"]["key"]
  for kernel in ("flash", "xla"):
    got = models.with_options(model, kernel=kernel).apply({"params": params}, features, tokens)
    np.testing.assert_allclose(got, logits, atol=2e-5)
  scanned = models.with_options(model, scan_layers=True, remat="full")
  np.testing.assert_allclose(scanned.apply({"params": layouts.stack(params)}, features, tokens),
                             logits, atol=2e-5)
  # The decoder's first token sees only itself: later tokens do not change it (causal).
  changed = tokens.at[:, 1:].set(3)
  np.testing.assert_allclose(model.apply({"params": params}, features, changed)[:, 0],
                             logits[:, 0], atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_the_cached_decoder_continues_teacher_forcing(scan):
  """Cross-attention projects the encoder output once, on the first call, and later calls
  (encoded=None) read its keys and values from the cache."""
  model, params, features, tokens = _model_and_inputs()
  logits = model.apply({"params": params}, features, tokens)
  if scan:
    model, params = models.with_options(model, scan_layers=True), layouts.stack(params)
  decoder = models.with_options(model, decode=True)
  encoded = model.apply({"params": params}, features, method=model.encode)
  cache = init_cache(decoder, features, tokens)  # sized for the whole target
  steps = []
  for i in range(tokens.shape[1]):
    step, state = decoder.apply({"params": params, "cache": cache}, tokens[:, i:i + 1],
                                encoded if i == 0 else None, method=decoder.decode_logits,
                                mutable=["cache"])
    cache = state["cache"]
    steps.append(step[:, 0])
  np.testing.assert_allclose(jnp.stack(steps, axis=1), logits, atol=2e-5)
  blocks = cache["decoder_blocks"] if scan else cache["decoder_blocks_0"]
  assert blocks["cross_attention"]["cross_key"].shape[-3:-2] == (encoded.shape[1],)


def test_features_that_do_not_fit_say_why():
  model, params, features, tokens = _model_and_inputs()
  with pytest.raises(ValueError, match="features have 128 mel bins; this model reads 80"):
    model.apply({"params": params}, jnp.zeros((1, 60, 128)), tokens)
  with pytest.raises(ValueError, match="130 frames exceed the encoder's 128"):
    model.apply({"params": params}, jnp.zeros((1, 130, 80)), tokens)


def test_greedy_decoding_continues_the_prompt_within_the_decoders_positions():
  from attention_jax.models import whisper_decoding
  model, params, features, tokens = _model_and_inputs()
  prompt = tokens[:, :3]
  out = whisper_decoding.greedy(model, params, features, prompt, max_new_tokens=5, eos_id=-1)
  assert out.shape == (2, 5)
  logits = model.apply({"params": params}, features, jnp.concatenate([prompt, out], axis=1))
  np.testing.assert_array_equal(out, jnp.argmax(logits[:, 2:-1], axis=-1))  # teacher-forced
  with pytest.raises(ValueError, match="a prompt of 3 tokens and 40 new ones exceed the "
                     "decoder's 32 positions"):
    whisper_decoding.greedy(model, params, features, prompt, max_new_tokens=40, eos_id=2)
