"""dot_product, flash, xla and auto against the numpy reference: forward and gradients."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from attention_jax import kernels
from tests.kernels import reference
from tests.kernels.cases import CASES, make_inputs

KERNELS = {
    "dot_product": kernels.dot_product_attention,
    "flash_small_blocks": functools.partial(kernels.flash_attention, block_q=32, block_k=64),
    "flash_default_blocks": kernels.flash_attention,
    "xla": kernels.xla_attention,
    "auto": kernels.auto_attention,
}


def reference_mask(case, kwargs):
  seg = kwargs.get("segment_ids")
  allowed = reference.mask_reference(
      case.batch, case.q_len, case.kv_len, causal=case.causal,
      kv_lengths=case.kv_lengths, local_window=case.local_window,
      segment_ids=None if seg is None else np.asarray(seg))
  if "mask" in kwargs:
    allowed = allowed & np.asarray(kwargs["mask"])
  return allowed


def f64(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_forward_and_gradients_f32(kernel, case):
  q, k, v, d_out, kwargs = make_inputs(case)
  fn = jax.jit(functools.partial(KERNELS[kernel], **kwargs))
  mask = reference_mask(case, kwargs)
  want, _ = reference.attention_reference(q, k, v, mask=mask)
  np.testing.assert_allclose(fn(q, k, v), want, atol=2e-6, rtol=0)

  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * d_out), (0, 1, 2)))(q, k, v)
  want_grads = reference.attention_reference_grads(q, k, v, d_out, mask=mask)[:3]
  for name, got, exp in zip("qkv", grads, want_grads):
    np.testing.assert_allclose(got, exp, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")


def check_bfloat16(kernel, case, **options):
  """`kernel` on bf16 inputs: bf16 out, forward and gradients near the float64 reference
  (the scores accumulate in float32)."""
  q, k, v, d_out, kwargs = make_inputs(case, jnp.bfloat16)
  kwargs = {name: x for name, x in kwargs.items() if x is not None}
  fn = jax.jit(functools.partial(kernel, **options, **kwargs))
  out = fn(q, k, v)
  assert out.dtype == jnp.bfloat16
  mask = reference_mask(case, kwargs)
  want, _ = reference.attention_reference(f64(q), f64(k), f64(v), mask=mask)
  np.testing.assert_allclose(f64(out), want, atol=3e-2)
  grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * d_out),
                   (0, 1, 2))(q, k, v)
  want_grads = reference.attention_reference_grads(f64(q), f64(k), f64(v), f64(d_out),
                                                   mask=mask)[:3]
  for got, exp in zip(grads, want_grads):
    assert got.dtype == jnp.bfloat16
    scale = np.abs(exp).max()
    np.testing.assert_allclose(f64(got) / scale, exp / scale, atol=4e-2)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "causal_257_gqa", "cross_100x1000_lengths", "segments_96", "causal_window_257")], ids=str)
@pytest.mark.parametrize("kernel", ["dot_product", "flash_small_blocks"])
def test_bfloat16_accumulates_in_float32(kernel, case):
  check_bfloat16(KERNELS[kernel], case)


@pytest.mark.parametrize("bias_shape", [(1, 4, 20, 30), (2, 1, 1, 30), (20, 30)])
@pytest.mark.parametrize("kernel", ["dot_product", "xla", "auto"])
def test_bias_forward_and_gradient(kernel, bias_shape):
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((2, 20, 4, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((2, 30, 2, 8)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((2, 30, 2, 8)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(bias_shape), jnp.float32)
  d_out = jnp.asarray(rng.standard_normal((2, 20, 4, 8)), jnp.float32)
  mask = reference.mask_reference(2, 20, 30, causal=True)
  fn = functools.partial(KERNELS[kernel], causal=True)
  want, _ = reference.attention_reference(q, k, v, bias=bias, mask=mask)
  np.testing.assert_allclose(fn(q, k, v, bias=bias), want, atol=2e-6)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a[:3], bias=a[3]) * d_out), (0, 1, 2, 3))(
      q, k, v, bias)
  dq, dk, dv, ds = reference.attention_reference_grads(q, k, v, d_out, bias=bias, mask=mask)
  for got, exp in zip(grads, (dq, dk, dv, reference.reduce_to_shape(ds, bias_shape))):
    np.testing.assert_allclose(got, exp, atol=2e-5, rtol=1e-5)


def test_return_weights_match_reference_softmax():
  q, k, v, _, kwargs = make_inputs(CASES[3])
  out, weights = kernels.dot_product_attention(q, k, v, return_weights=True, **kwargs)
  mask = reference_mask(CASES[3], kwargs)
  want_out, want_w = reference.attention_reference(q, k, v, mask=mask)
  np.testing.assert_allclose(weights, want_w, atol=1e-6)
  np.testing.assert_allclose(out, want_out, atol=2e-6)


def test_plain_dot_product_with_scale_one():
  q, k, v, _, _ = make_inputs(CASES[1])
  want, _ = reference.attention_reference(q, k, v, scale=1.0)
  np.testing.assert_allclose(kernels.dot_product_attention(q, k, v, scale=1.0), want, atol=1e-5)
  np.testing.assert_allclose(kernels.flash_attention(q, k, v, scale=1.0), want, atol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
  q, k, v, _, _ = make_inputs(CASES[1])
  mask = jnp.zeros((2, 1, 7, 7), bool).at[:, :, :3].set(True)
  for name in ("dot_product", "flash_small_blocks", "xla"):
    out = KERNELS[name](q, k, v, mask=mask)
    assert not np.isnan(np.asarray(out)).any()
    np.testing.assert_array_equal(out[:, 3:], 0.0)
    grad = jax.grad(lambda q: KERNELS[name](q, k, v, mask=mask).sum())(q)
    assert np.isfinite(np.asarray(grad)).all()
