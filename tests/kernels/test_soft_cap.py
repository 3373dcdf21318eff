"""Gemma 2's logit soft-capping, cap·tanh(scores / cap) before the mask and softmax, in every
kernel that takes it (dot_product, flash inside its blockwise loop and custom backward, ring,
splash in interpret mode), forward and gradients against the float64 numpy reference; and
`auto` routing capped calls around the kernels that cannot take a cap."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from attention_jax import kernels
from tests.kernels import reference
from tests.kernels.cases import CASES, make_inputs
from tests.kernels.test_softmax_kernels import reference_mask
from tests.kernels.test_vendor_kernels import fake_backend

CAP = 2.0  # scores of these inputs reach about ±6 (inputs scaled by 2): the cap bends them


def _check(fn, case, kwargs, atol=2e-6, grad_atol=2e-5, scale_inputs=2.0):
  q, k, v, d_out, _ = make_inputs(case)
  q, k = q * scale_inputs, k * scale_inputs
  mask = reference_mask(case, kwargs)
  want, _ = reference.attention_reference(q, k, v, mask=mask, soft_cap=CAP)
  uncapped, _ = reference.attention_reference(q, k, v, mask=mask)
  if case.q_len * case.kv_len > 1:
    assert np.abs(want - uncapped).max() > 1e-2  # the cap changes the answer
  np.testing.assert_allclose(fn(q, k, v), want, atol=atol, rtol=0)
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * d_out), (0, 1, 2)))(q, k, v)
  want_grads = reference.attention_reference_grads(q, k, v, d_out, mask=mask, soft_cap=CAP)
  for axis, got, exp in zip("qkv", grads, want_grads[:3]):
    np.testing.assert_allclose(got, exp, atol=grad_atol, rtol=1e-5, err_msg=f"d{axis}")


@pytest.mark.parametrize("name", ["dot_product", "flash", "flash_small_blocks"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_soft_capped_kernels_equal_the_reference(name, case):
  _, _, _, _, kwargs = make_inputs(case)
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  if name.startswith("flash"):
    blocks = dict(block_q=16, block_k=32) if name == "flash_small_blocks" else {}
    kernel = functools.partial(kernels.flash_attention, **blocks)
  else:
    kernel = kernels.dot_product_attention
  _check(jax.jit(functools.partial(kernel, logits_soft_cap=CAP, **kwargs)), case, kwargs)


def test_soft_capped_ring_on_four_devices_equals_the_reference():
  case = next(c for c in CASES if c.name == "segments_96")
  _, _, _, _, kwargs = make_inputs(case)
  mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(AxisType.Auto,) * 2)
  ring = functools.partial(kernels.get("ring"), causal=True, logits_soft_cap=CAP,
                           segment_ids=kwargs["segment_ids"], block_q=8, block_k=8)
  causal = dict(kwargs, causal=True)
  with jax.set_mesh(mesh):
    split = NamedSharding(mesh, P(None, "sequence"))
    fn = jax.jit(lambda q, k, v: ring(*(jax.device_put(x, split) for x in (q, k, v))))
    _check(fn, case.__class__(**{**case.__dict__, "causal": True}), causal)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "causal_257_gqa", "cross_100x1000_lengths", "segments_96")], ids=str)
def test_soft_capped_splash_in_interpret_mode(case):
  _, _, _, _, kwargs = make_inputs(case)
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  fn = jax.jit(functools.partial(kernels.get("splash"), interpret=True, logits_soft_cap=CAP,
                                 **kwargs))
  _check(fn, case, kwargs)


@pytest.mark.parametrize("platform,q_len,extra,expected", [
    ("gpu", 4096, {}, "flash"),  # cuDNN, Pallas-GPU and jax.nn take no cap
    ("gpu", 512, {}, "dot_product"),  # 512 x 512 scores: below AUTO_FLASH_MIN_SCORES
    ("tpu", 4096, {}, "splash"),  # splash takes it (attn_logits_soft_cap)
    ("tpu", 1, {}, "dot_product"),  # decoding: not xla, which takes no cap
    ("tpu", 4096, {"mask": jnp.ones((1, 1), bool)}, "flash"),
    ("cpu", 4096, {}, "flash"),
])
def test_auto_routes_soft_capped_logits_around_kernels_without_a_cap(
    monkeypatch, platform, q_len, extra, expected):
  fake_backend(monkeypatch, platform)
  q = jax.ShapeDtypeStruct((1, q_len, 8, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, max(q_len, 512) if q_len > 1 else 4096, 8, 64), jnp.bfloat16)
  choice = kernels.choose(q, kv, kv, causal=True, logits_soft_cap=50.0, **extra)
  assert choice == expected and kernels.get(choice).supports("logits_soft_cap")


def test_soft_cap_errors_name_the_argument_and_the_kernels_that_take_it():
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="`logits_soft_cap` must be a positive number"):
    kernels.dot_product_attention(q, q, q, logits_soft_cap=0.0)
  with pytest.raises(ValueError, match="does not take \\['logits_soft_cap'\\]. Kernels that "
                     "do: .*dot_product.*flash"):
    kernels.get("xla")(q, q, q, logits_soft_cap=30.0)
  assert "soft_cap" in kernels.get("flash").capabilities
  assert "soft_cap" not in kernels.get("xla").capabilities
