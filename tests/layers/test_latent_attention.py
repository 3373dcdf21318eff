"""Multi-head latent attention (DeepSeek's MLA): the absorbed latent cache decodes what the
materialised forward computes, through every kernel; its configuration errors and LoRA.
(Parity with transformers' DeepseekV2/V3: tests/pretrained/test_llama_parity.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import models
from attention_jax.layers import lora as lora_lib
from attention_jax.models.generation import init_cache
from tests.models.test_models import prefill_then_steps


def _model_and_params(**options):
  model = models.create("deepseek-tiny", **options)
  tokens = jax.random.randint(jax.random.key(1), (2, 22), 0, model.config.vocab_size)
  params = model.init(jax.random.key(0), tokens)["params"]
  # Larger weights than init's: logits far from uniform, so argmax ties cannot hide errors.
  params = jax.tree.map(lambda p: p * 5.0 if p.ndim > 1 else p, params)
  return model, params, tokens


def test_absorbed_decode_equals_the_materialised_forward_over_a_prompt_and_16_tokens():
  model, params, tokens = _model_and_params()
  prompt = tokens[:, :6]
  generated = models.generate(model, params, prompt, max_new_tokens=16,
                              rng=jax.random.key(0), temperature=0.0)  # absorbed by default
  sequence = jnp.concatenate([prompt, generated], axis=1)
  forward = model.apply({"params": params}, sequence)  # materialised, no cache
  assert forward.std() > 0.5
  np.testing.assert_array_equal(jnp.argmax(forward[:, 5:-1], -1), generated)
  for mode in ("absorbed", "materialised"):
    stepped, cache = prefill_then_steps(models.with_options(model, mla_decode=mode), params,
                                        sequence, prefill=6)
    np.testing.assert_allclose(stepped, forward, atol=5e-5)
    c = model.config
    cached = {name: leaf.shape for name, leaf in cache["block_0"]["attention"].items()
              if name != "cache_index"}
    length = sequence.shape[1]
    if mode == "absorbed":  # the latent and the shared rotary key: 20 numbers per token
      assert cached == {"cached_latent": (2, length, 1, c.kv_lora_rank + c.qk_rope_head_dim)}
    else:  # each head's keys (8 + 4 wide) and values (6 wide): 72 numbers per token
      assert cached == {
          "cached_key": (2, length, c.num_heads, c.qk_nope_head_dim + c.qk_rope_head_dim),
          "cached_value": (2, length, c.num_heads, c.v_head_dim)}


def test_latent_attention_runs_on_every_softmax_kernel_and_trains():
  """v_head_dim (6) differs from the query's (12): xla pads the values (the registry's
  `equal_head_dims`), flash takes them as they are; absorbed decoding of a padded batch."""
  model, params, tokens = _model_and_params()
  reference = model.apply({"params": params}, tokens)
  for kernel in ("flash", "xla"):
    got = models.with_options(model, kernel=kernel).apply({"params": params}, tokens)
    np.testing.assert_allclose(got, reference, atol=2e-5)
  grads = jax.grad(lambda p: models.with_options(model, kernel="xla").apply(
      {"params": p}, tokens).std())(params)
  for name in ("query_up", "kv_up", "kv_down", "query_down", "out"):
    assert np.abs(grads["block_0"]["attention"][name]["kernel"]).max() > 0, name
  # A left-padded row decodes as it runs alone, through the latent cache.
  segments = jnp.ones_like(tokens).at[1, :4].set(0)
  positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
  padded = model.apply({"params": params}, tokens, segment_ids=segments, positions=positions)
  alone = model.apply({"params": params}, tokens[1:, 4:])
  np.testing.assert_allclose(padded[1, 4:], alone[0], atol=2e-5)
  decoder = models.with_options(model, decode=True)
  cache = init_cache(decoder, jnp.zeros_like(tokens))
  logits, _ = decoder.apply({"params": params, "cache": cache}, tokens, segment_ids=segments,
                            positions=positions, mutable=["cache"])
  np.testing.assert_allclose(logits[1, 4:], alone[0], atol=5e-5)


def test_yarn_mscale_all_dim_scales_the_softmax():
  """DeepSeek's rule: qk_head_dim ** -0.5 times mscale(factor, mscale_all_dim) squared (the
  rotary's own factor, mscale / mscale_all_dim, is 1 here)."""
  from attention_jax.kernels.positional import RopeScaling, yarn_mscale
  from attention_jax.layers.latent_attention import LatentAttention
  dims = dict(num_heads=4, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
              v_head_dim=6, position="rotary")
  yarn = RopeScaling("yarn", 4.0, original_max_len=16, mscale=1.0, mscale_all_dim=1.0)
  assert LatentAttention(**dims).softmax_scale() == 12 ** -0.5
  assert LatentAttention(**dims, rope_scaling=yarn).softmax_scale() == pytest.approx(
      12 ** -0.5 * yarn_mscale(4.0, 1.0) ** 2)
  model, params, tokens = _model_and_params()
  scaled, _, _ = _model_and_params(rope_scaling=yarn)
  assert np.abs(scaled.apply({"params": params}, tokens)
                - model.apply({"params": params}, tokens)).max() > 1e-2


def test_latent_attention_configs_say_what_is_wrong():
  with pytest.raises(ValueError, match="has rotary positions on every head, no QK-norm, GQA"
                     r".*\{'num_kv_heads': 2\}"):
    models.create("llama-tiny", kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4,
                  v_head_dim=6)
  with pytest.raises(ValueError, match="qk_nope_head_dim describe multi-head latent "
                     "attention; set kv_lora_rank"):
    models.create("llama-tiny", qk_nope_head_dim=8)
  with pytest.raises(ValueError, match="needs positive integers .*'v_head_dim': None"):
    models.create("deepseek-tiny", v_head_dim=None)
  with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
    models.create("deepseek-tiny", qk_rope_head_dim=3)
  with pytest.raises(ValueError, match="mla_decode must be one of"):
    models.create("deepseek-tiny", mla_decode="latent")


def test_lora_adapts_the_query_and_output_of_latent_attention():
  spec = lora_lib.LoraSpec(rank=2, targets=("query", "out"))
  model, params, tokens = _model_and_params()
  adapted = models.with_options(model, lora=spec)
  lora_params = adapted.init(jax.random.key(2), tokens)["params"]
  attention = lora_params["block_0"]["attention"]
  assert {"query_up_lora", "out_lora"} <= set(attention)
  lora_params = jax.tree.map(lambda p: p + 0.1, lora_params)  # b != 0: the adapters act
  merged = lora_lib.merge(lora_params, spec)
  np.testing.assert_allclose(adapted.apply({"params": lora_params}, tokens),
                             model.apply({"params": merged}, tokens), atol=1e-4)
  with pytest.raises(ValueError, match="name key/value projections, which multi-head latent "
                     "attention does not have"):
    models.with_options(model, lora=lora_lib.LoraSpec()).init(jax.random.key(0), tokens)


def test_fsdp_splits_every_latent_projection():
  """Every matrix of latent attention has a dimension on FSDP's `embed` axis: the
  up-projections' latent side too, so fsdp=N holds 1/N of them (DeepSeek-V3's 3.3B
  up-projection parameters were whole on every device before)."""
  from attention_jax.layers import partitioning
  model, params, _ = _model_and_params()
  axes = partitioning.logical_axes(params)["block_0"]["attention"]
  for name in ("query_down", "query_up", "kv_down", "kv_up", "out"):
    assert "embed" in tuple(axes[name]["kernel"]), (name, axes[name]["kernel"])
