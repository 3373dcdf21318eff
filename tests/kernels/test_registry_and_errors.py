"""The kernel registry, dropout, and the ValueErrors for bad input."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from attention_jax import kernels

Q = jnp.ones((2, 5, 4, 8))
KV = jnp.ones((2, 7, 2, 8))


def test_registry_has_the_kernels_and_lists_them_on_error():
  assert {"dot_product", "flash", "additive", "relative", "xla", "cudnn", "auto"} <= set(
      kernels.names())
  with pytest.raises(ValueError, match="valid names: additive, auto, cudnn, dot_product"):
    kernels.get("dotproduct")


def test_registry_kernels_agree_with_dot_product():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((1, 1024, 2, 16), (1, 1024, 1, 16), (1, 1024, 1, 16)))
  want = kernels.dot_product_attention(q, k, v, causal=True)
  assert kernels.choose(q, k) == "flash"  # 1024 x 1024 scores: the blockwise kernel
  for name in ("flash", "xla", "auto"):
    np.testing.assert_allclose(kernels.get(name)(q, k, v, causal=True), want, atol=2e-6)


def test_auto_picks_dense_kernel_for_bias_dropout_weights_and_short_inputs():
  assert kernels.choose(Q, KV) == "dot_product"
  assert kernels.choose(jnp.ones((1, 512, 2, 8)), jnp.ones((1, 512, 2, 8))) == "dot_product"
  long_q = jnp.ones((1, 1024, 2, 8))
  assert kernels.choose(long_q, long_q) == "flash"
  assert kernels.choose(long_q, long_q, bias=jnp.zeros((1024, 1024))) == "dot_product"
  assert kernels.choose(long_q, long_q, dropout_rate=0.1) == "dot_product"
  assert kernels.choose(long_q, long_q, dropout_rate=0.1, deterministic=True) == "flash"
  assert kernels.choose(long_q, long_q, return_weights=True) == "dot_product"


@pytest.mark.parametrize("value_dim", [6, 20])  # narrower and wider than the query's 12
def test_kernels_that_need_equal_head_dims_take_others_through_the_registry(value_dim):
  """xla (jax.nn.dot_product_attention) needs value's head_dim equal to the query's; called
  through the registry, zeros pad the narrower side (MLA's values) and the output is cut
  back: the same outputs and gradients as dot_product, which takes any value width."""
  keys = jax.random.split(jax.random.key(0), 3)
  query = jax.random.normal(keys[0], (2, 9, 4, 12))
  key = jax.random.normal(keys[1], (2, 9, 2, 12))
  value = jax.random.normal(keys[2], (2, 9, 2, value_dim))
  xla, reference = kernels.get("xla"), kernels.get("dot_product")
  assert xla.equal_head_dims and not reference.equal_head_dims
  with pytest.raises(ValueError):  # the function itself refuses
    xla.fn(query, key, value, causal=True)
  for scale in (None, 0.3):
    run = lambda kernel, q, k, v: kernel(q, k, v, causal=True, scale=scale)
    np.testing.assert_allclose(run(xla, query, key, value), run(reference, query, key, value),
                               atol=1e-5)
    loss = lambda kernel: jax.grad(lambda *x: jnp.sum(jnp.sin(run(kernel, *x))),
                                   argnums=(0, 1, 2))(query, key, value)
    for got, want in zip(loss(xla), loss(reference)):
      np.testing.assert_allclose(got, want, atol=1e-5)


def test_cudnn_needs_a_gpu():
  if jax.default_backend() == "gpu":
    pytest.skip("a GPU is present")
  with pytest.raises(ValueError, match="kernel 'cudnn' runs on gpu only"):
    kernels.get("cudnn")


def test_kernel_rejects_arguments_it_cannot_take_and_names_those_that_can():
  with pytest.raises(ValueError, match="'flash' does not take \\['bias'\\]. Kernels that do: "
                     "additive, auto, cudnn, dot_product, relative, xla"):
    kernels.get("flash")(Q, KV, KV, bias=jnp.zeros((5, 7)))


def test_register_custom_kernel_and_wrap_callables():
  def my_kernel(query, key, value, *, causal=False):
    return kernels.dot_product_attention(query, key, value, causal=causal)

  entry = kernels.register("test_custom", my_kernel)
  assert kernels.get("test_custom") is entry and "test_custom" in kernels.names()
  np.testing.assert_array_equal(entry(Q, KV, KV, causal=True),
                                kernels.dot_product_attention(Q, KV, KV, causal=True))
  assert kernels.get(my_kernel).supports("causal")
  with pytest.raises(ValueError, match="already registered"):
    kernels.register("test_custom", my_kernel)


@pytest.mark.parametrize("kernel", ["dot_product", "flash", "xla"])
@pytest.mark.parametrize("args,kwargs,message", [
    ((jnp.ones((5, 4, 8)), KV, KV), {}, "`query` must have rank 4"),
    ((Q, jnp.ones((2, 7, 3, 8)), jnp.ones((2, 7, 3, 8))), {}, "multiple of key/value heads"),
    ((Q, jnp.ones((2, 7, 2, 6)), KV), {}, "head_dim differ"),
    ((Q, KV, jnp.ones((2, 6, 2, 8))), {}, "same length"),
    ((Q, KV, jnp.ones((3, 7, 2, 8))), {}, "batch sizes differ"),
    ((Q, KV, KV), {"mask": jnp.ones((2, 1, 5, 6), bool)}, "kv_len axis has size 6"),
    ((Q, KV, KV), {"mask": jnp.ones((5, 7))}, "must be boolean"),
    ((Q, KV, KV), {"kv_lengths": jnp.array([3])}, "`kv_lengths` must have shape"),
    ((Q, KV, KV), {"segment_ids": jnp.zeros((2, 5), int)}, "needs q_len == kv_len"),
    ((Q, KV, KV), {"local_window": -1}, "must be >= 0"),
    ((Q.astype(jnp.int32), KV, KV), {}, "floating-point"),
])
def test_bad_input_gives_clear_value_error(kernel, args, kwargs, message):
  with pytest.raises(ValueError, match=message):
    kernels.get(kernel)(*args, **kwargs)


def test_flash_block_size_and_dropout_errors():
  with pytest.raises(ValueError, match="`block_q` must be >= 1"):
    kernels.flash_attention(Q, KV, KV, block_q=0)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    kernels.dot_product_attention(Q, KV, KV, dropout_rate=0.1)
  with pytest.raises(ValueError, match=r"in \[0, 1\)"):
    kernels.dot_product_attention(Q, KV, KV, dropout_rate=1.0, dropout_rng=jax.random.key(0))


def test_relative_and_additive_shape_errors():
  r, u = jnp.ones((7, 4, 8)), jnp.ones((4, 8))
  kv4 = jnp.ones((2, 7, 4, 8))
  with pytest.raises(ValueError, match="`rel_pos_emb` must have shape"):
    kernels.relative_attention(Q, kv4, kv4, jnp.ones((6, 4, 8)), u, u)
  with pytest.raises(ValueError, match="kv_len >= q_len"):
    kernels.relative_attention(kv4, Q, Q, r, u, u)
  with pytest.raises(ValueError, match="`method` must be one of"):
    kernels.relative_attention(Q, kv4, kv4, r, u, u, method="roll")
  with pytest.raises(ValueError, match="parameters do not fit"):
    kernels.additive_attention(Q, KV, KV, jnp.ones((8, 3)), jnp.ones((8, 3)), jnp.ones(4))


@pytest.mark.parametrize("kernel", ["dot_product", "relative"])
def test_dropout(kernel):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 6, 2, 4)), jnp.float32) for _ in range(3))
  if kernel == "relative":
    r = jnp.asarray(rng.standard_normal((6, 2, 4)), jnp.float32)
    fn = lambda **kw: kernels.relative_attention(q, k, v, r, jnp.zeros((2, 4)),
                                                 jnp.zeros((2, 4)), **kw)
  else:
    fn = lambda **kw: kernels.dot_product_attention(q, k, v, causal=True, **kw)
  plain = fn()
  a = fn(dropout_rate=0.3, dropout_rng=jax.random.key(1))
  b = fn(dropout_rate=0.3, dropout_rng=jax.random.key(2))
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(a, fn(dropout_rate=0.3, dropout_rng=jax.random.key(1)))
  np.testing.assert_array_equal(fn(dropout_rate=0.0, dropout_rng=jax.random.key(1)), plain)
  np.testing.assert_array_equal(
      fn(dropout_rate=0.3, dropout_rng=jax.random.key(1), deterministic=True), plain)
  # Inverted dropout is unbiased: the mean over many keys approaches the plain output.
  keys = jax.random.split(jax.random.key(3), 2000)
  mean = jax.vmap(lambda key: fn(dropout_rate=0.3, dropout_rng=key))(keys).mean(0)
  np.testing.assert_allclose(mean, plain, atol=0.1)


@pytest.mark.parametrize("name", kernels.names())
def test_every_registered_kernel_computes_what_its_entry_says(name):
  """Enumerates the registry (not a hand-kept list): each kernel gets the arguments its
  capabilities name (causal, padding, packed segments; GQA) and is compared with the
  reference for what it `computes`."""
  from attention_jax.kernels import registry
  from tests.kernels import reference
  from tests.kernels.cases import CASES, make_inputs
  from tests.kernels.test_linear_kernels import quadratic_reference, real_keys
  entry = registry._KERNELS[name]
  if jax.default_backend() not in entry.platforms:
    pytest.skip(f"runs on {entry.platforms} (the vendor tests run it in interpret mode)")
  if entry.computes in ("additive", "relative"):
    pytest.skip("takes its own parameters (tests/kernels/test_additive_relative.py)")
  case = next(c for c in CASES if c.name == "causal_segments_lengths")
  q, k, v, _, kwargs = make_inputs(case)
  wanted = {"causal": "causal", "padding": "kv_lengths", "segments": "segment_ids"}
  kwargs = {arg: kwargs[arg] for cap, arg in wanted.items() if cap in entry.capabilities}
  seg = kwargs.get("segment_ids")
  allowed = reference.mask_reference(
      case.batch, case.q_len, case.kv_len, causal=True, kv_lengths=(
          case.kv_lengths if "kv_lengths" in kwargs else None),
      segment_ids=None if seg is None else np.asarray(seg))
  got = entry(q, k, v, **kwargs)
  if entry.computes == "softmax":
    want, _ = reference.attention_reference(q, k, v, mask=allowed)
  else:
    kernel = {"linear": "linear", "retention": "retention",
              "softmax_estimate": "performer"}[entry.computes]
    real = real_keys(case) if "kv_lengths" in kwargs else jnp.ones(k.shape[:2], bool)
    want = quadratic_reference(kernel, q, k, v, jnp.asarray(allowed), causal=True, real=real)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  assert entry.decoding in registry.DECODING + (None,)
  assert ("decoding_state" in entry.capabilities) == (entry.decoding == "state")
