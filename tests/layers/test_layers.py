"""Multi-head attention, embeddings and blocks: kernels interchangeable, errors clear."""

import functools

import numpy as np
import pytest
import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax import kernels
from attention_jax.layers import (AttentionInputs, LoraSpec, Mlp, MultiHeadAttention,
                                  PatchEmbedding, TextEmbeddings, TransformerBlock)
from attention_jax.layers.config import TransformerConfig, with_options


class ArticleSelfAttention(nn.Module):
  """The article's PyTorch `SelfAttention`, as a Flax module over our kernel (no scaling)."""
  embed_dim: int

  @nn.compact
  def __call__(self, inputs):
    query, key, value = (nn.Dense(self.embed_dim, name=n)(inputs)[:, :, None, :]
                         for n in ("query_linear", "key_linear", "value_linear"))
    return kernels.get("dot_product")(query, key, value, scale=1.0)[:, :, 0, :]


def test_article_self_attention_module():
  model = ArticleSelfAttention(embed_dim=128)
  input_sequence = jax.random.normal(jax.random.key(0), (16, 10, 128))
  params = model.init(jax.random.key(1), input_sequence)
  output = model.apply(params, input_sequence)
  assert output.shape == (16, 10, 128)
  x = np.asarray(input_sequence, np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  q, k, v = (x @ p[n]["kernel"] + p[n]["bias"] for n in ("query_linear", "key_linear",
                                                           "value_linear"))
  s = q @ k.transpose(0, 2, 1)
  w = np.exp(s - s.max(-1, keepdims=True))
  np.testing.assert_allclose(output, (w / w.sum(-1, keepdims=True)) @ v, atol=1e-4)


@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
def test_attention_kernels_are_interchangeable(num_kv_heads):
  x = jax.random.normal(jax.random.key(0), (2, 40, 32))
  mha = MultiHeadAttention(num_heads=4, num_kv_heads=num_kv_heads)
  params = mha.init(jax.random.key(1), x)
  assert params["params"]["key"]["kernel"].shape == (32, num_kv_heads or 4, 8)
  lengths = jnp.array([40, 23])
  inputs = AttentionInputs(causal=True, kv_lengths=lengths)
  want = mha.apply(params, x, None, inputs)
  for name in ("flash", "xla", "auto", functools.partial(kernels.flash_attention, block_q=8,
                                                         block_k=16)):
    got = mha.clone(kernel=name).apply(params, x, None, inputs)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cross_attention_and_sown_weights():
  x, memory = jnp.ones((2, 5, 16)), jax.random.normal(jax.random.key(0), (2, 7, 24))
  mha = MultiHeadAttention(num_heads=2, sow_weights=True)
  params = mha.init(jax.random.key(1), x, memory)
  out, state = mha.apply(params, x, memory, AttentionInputs(kv_lengths=jnp.array([7, 3])),
                         mutable=["intermediates"])
  assert out.shape == (2, 5, 16)
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (2, 2, 5, 7)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(weights[1, :, :, 3:], 0.0)


def test_attention_dropout_needs_rng_and_differs_by_key():
  x = jax.random.normal(jax.random.key(0), (1, 6, 16))
  mha = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
  params = mha.init(jax.random.key(1), x)
  a = mha.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  b = mha.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
  assert np.abs(a - b).max() > 1e-4
  np.testing.assert_array_equal(mha.apply(params, x), mha.clone(dropout_rate=0.0).apply(
      params, x))


@pytest.mark.parametrize("module,message", [
    (MultiHeadAttention(num_heads=3), "width 32 is not divisible by num_heads=3"),
    (MultiHeadAttention(num_heads=4, num_kv_heads=3), "multiple of num_kv_heads=3"),
    (MultiHeadAttention(num_heads=4, kernel="flash", position="alibi"),
     "incompatible with this layer: it needs an additive bias.*dot_product"),
    (MultiHeadAttention(num_heads=4, kernel="flash", sow_weights=True),
     "returned attention weights"),
    (MultiHeadAttention(num_heads=4, kernel="dot_product", position="relative"),
     "position='relative' together with kernel='relative'"),
    (MultiHeadAttention(num_heads=4, kernel="flsh"), "unknown attention kernel 'flsh'"),
])
def test_attention_configuration_errors(module, message):
  with pytest.raises(ValueError, match=message):
    module.init(jax.random.key(0), jnp.ones((1, 4, 32)))


def test_flash_kernel_with_training_dropout_names_the_fix():
  mha = MultiHeadAttention(num_heads=4, kernel="flash", dropout_rate=0.1)
  x = jnp.ones((1, 4, 32))
  params = mha.init(jax.random.key(0), x)  # deterministic: fine
  with pytest.raises(ValueError, match="set attention_dropout_rate=0"):
    mha.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


def test_embeddings_errors_and_tied_logits():
  embed = TextEmbeddings(vocab_size=11, width=8, max_len=4, type_vocab_size=2)
  params = embed.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="sequence length 5 exceeds the model's maximum of 4"):
    embed.apply(params, jnp.zeros((1, 5), jnp.int32))
  x = jnp.ones((2, 3, 8))
  logits = embed.apply(params, x, method=TextEmbeddings.attend)
  np.testing.assert_allclose(logits, x @ params["params"]["token"]["embedding"].T, rtol=1e-6)
  with pytest.raises(ValueError, match="not divisible by the patch size 4"):
    PatchEmbedding(4, 8).init(jax.random.key(0), jnp.ones((1, 10, 8, 3)))
  with pytest.raises(ValueError, match="unknown activation 'swish'"):
    Mlp(8, activation="swish").init(jax.random.key(0), x)


def test_gated_mlp_has_gate_parameters():
  params = Mlp(16, gated=True, activation="silu").init(jax.random.key(0), jnp.ones((1, 8)))
  assert set(params["params"]) == {"fc1", "gate", "fc2"}


def test_lora_adapters_start_at_the_base_model_and_merge_exactly():
  from attention_jax.layers import lora
  spec = LoraSpec(rank=3, alpha=6.0, targets=("query", "key", "value", "out", "fc1", "fc2"))
  x = jax.random.normal(jax.random.key(0), (2, 5, 32))
  base = TransformerBlock(TransformerConfig(width=32, depth=1, num_heads=4, mlp_dim=64,
                                            pre_ln=False))
  adapted = with_options(base, lora=spec)
  params = adapted.init(jax.random.key(1), x)["params"]
  base_params = {k: v for k, v in params.items()}
  base_params["attention"] = {k: v for k, v in params["attention"].items()
                              if not k.endswith("_lora")}
  base_params["mlp"] = {k: v for k, v in params["mlp"].items() if not k.endswith("_lora")}
  assert jax.tree.structure(base_params) == jax.tree.structure(
      base.init(jax.random.key(1), x)["params"])  # the base paths are unchanged
  assert params["attention"]["out_lora"]["a"].shape == (4, 8, 3)  # contracts heads x head_dim
  # B starts at zero, so the adapted block starts as the base block.
  np.testing.assert_allclose(adapted.apply({"params": params}, x),
                             base.apply({"params": base_params}, x), atol=1e-6)
  # After training (B != 0) the merged base block equals the unmerged adapted one.
  trained = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 0.05 if path[-1].key == "b" else v, params)
  unmerged = adapted.apply({"params": trained}, x)
  merged = base.apply({"params": lora.merge(trained, spec)}, x)
  assert np.abs(unmerged - base.apply({"params": base_params}, x)).max() > 1e-2
  np.testing.assert_allclose(merged, unmerged, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"rank": 0}, "rank must be >= 1"), ({"targets": ("query", "up_proj")}, "subset of"),
    ({"targets": ()}, "subset of")])
def test_lora_spec_rejects_bad_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    LoraSpec(**kwargs)


def test_every_decoding_kernel_has_a_cache_class():
  """`caches.for_kernel` picks the cache of each kernel's `decoding`: none is left without one;
  a KV-cache kernel in a layer with a local window keeps the bounded window cache."""
  import types
  from attention_jax.layers import caches
  kinds = {"kv_cache": caches.KVCache, "window": caches.WindowCache, "state": caches.StateCache}
  full, windowed = types.SimpleNamespace(local_window=None), types.SimpleNamespace(local_window=4)
  for name in kernels.decoders():  # the vendor kernels too, off their platform
    kernel = kernels.registry._KERNELS[name]
    assert type(caches.for_kernel(kernel, full, None)) is kinds[kernel.decoding]
    expected = caches.WindowCache if kernel.decoding == "kv_cache" else kinds[kernel.decoding]
    assert type(caches.for_kernel(kernel, windowed, None)) is expected


def test_attention_logits_soft_cap_reaches_the_kernel():
  """config.attn_logits_soft_cap caps every layer's scores: the same with dot_product and
  flash, not the uncapped model, and refused (naming it) by a kernel without a cap."""
  from attention_jax import models
  model = models.create("gpt-tiny", attn_logits_soft_cap=0.5)
  tokens = jnp.arange(12)[None] % 7
  params = model.init(jax.random.key(0), tokens)["params"]
  params = jax.tree.map(lambda p: p * 4.0, params)  # large scores: the cap bends them
  capped = model.apply({"params": params}, tokens)
  flash = models.with_options(model, kernel="flash").apply({"params": params}, tokens)
  np.testing.assert_allclose(flash, capped, atol=1e-4, rtol=1e-5)
  plain = models.with_options(model, attn_logits_soft_cap=None).apply({"params": params}, tokens)
  assert np.abs(plain - capped).max() > 1e-2
  with pytest.raises(ValueError, match="soft-capped attention logits.*Kernels that support it: "
                     ".*dot_product"):
    models.with_options(model, kernel="xla").apply({"params": params}, tokens)
  from attention_jax import pretrained
  with pytest.raises(ValueError,
                     match="attn_logits_soft_cap=0.5, which GPT checkpoints cannot express"):
    pretrained.export(model, params, "/nonexistent")  # refused before anything is written


def test_learned_sinks_are_parameters_that_reach_the_kernel_and_learn():
  """config.learned_sinks gives each attention layer a 'sinks' [heads] parameter, used the
  same by dot_product and flash (and by the KV cache when decoding), with a gradient;
  refused, naming it, by a kernel without sinks and by exports."""
  from attention_jax import models, pretrained
  from tests.models.test_models import prefill_then_steps
  model = models.create("llama-tiny", learned_sinks=True)
  tokens = jnp.arange(24).reshape(2, 12) % 7
  params = model.init(jax.random.key(0), tokens)["params"]
  sinks = params["block_0"]["attention"]["sinks"]
  assert sinks.shape == (model.config.num_heads,) and not sinks.any()  # zeros at init
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.linspace(-2.0, 3.0, p.size).reshape(p.shape)
      if "sinks" in jax.tree_util.keystr(path) else p, params)
  logits = model.apply({"params": params}, tokens)
  flash = models.with_options(model, kernel="flash").apply({"params": params}, tokens)
  np.testing.assert_allclose(flash, logits, atol=1e-4, rtol=1e-5)
  # (linen ignores the unused 'sinks')
  plain = models.with_options(model, learned_sinks=False).apply({"params": params}, tokens)
  assert np.abs(plain - logits).max() > 1e-2
  stepped, _ = prefill_then_steps(model, params, tokens)
  np.testing.assert_allclose(stepped, logits, atol=5e-5)
  grads = jax.grad(lambda p: model.apply({"params": p}, tokens).sum())(params)
  assert np.abs(grads["block_0"]["attention"]["sinks"]).min() > 0
  with pytest.raises(ValueError, match="learned attention sinks.*Kernels that support it: "
                     ".*dot_product.*flash"):
    models.with_options(model, kernel="xla").apply({"params": params}, tokens)
  with pytest.raises(ValueError,
                     match="learned_sinks=True, which Llama checkpoints cannot express.*"
                           "as a Mixtral"):
    pretrained.export(model, params, "/nonexistent")


def test_qk_norm_normalises_each_heads_queries_and_keys_before_rotary():
  """config.qk_norm: parameters 'query_norm'/'key_norm' [head_dim]; the scores then ignore
  the scale of the query and key projections (RMSNorm is scale-invariant), the norm's weight
  changes them, and cached decoding equals the full pass."""
  from attention_jax import models
  from tests.models.test_models import prefill_then_steps
  model = models.create("llama-tiny", qk_norm=True, ln_eps=1e-12)  # eps: not scale-invariant
  tokens = jnp.arange(24).reshape(2, 12) % 7
  params = model.init(jax.random.key(0), tokens)["params"]
  attention = params["block_0"]["attention"]
  head_dim = model.config.width // model.config.num_heads
  assert attention["query_norm"]["scale"].shape == attention["key_norm"]["scale"].shape == (
      head_dim,)
  logits = model.apply({"params": params}, tokens)

  def changed(**factors):  # each module named in `factors` has its parameters multiplied
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p * factors.get(path[-2].key, 1.0), params)

  scaled = changed(query=7.0, key=5.0)  # the q/k projections' kernels
  np.testing.assert_allclose(model.apply({"params": scaled}, tokens), logits, atol=1e-4)
  plain = models.with_options(model, qk_norm=False)
  assert np.abs(plain.apply({"params": scaled}, tokens)
                - plain.apply({"params": params}, tokens)).max() > 1e-2
  weighted = changed(query_norm=3.0)
  assert np.abs(model.apply({"params": weighted}, tokens) - logits).max() > 1e-2
  stepped, _ = prefill_then_steps(model, weighted, tokens)
  np.testing.assert_allclose(stepped, model.apply({"params": weighted}, tokens), atol=5e-5)
