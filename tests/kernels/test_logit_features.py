"""Two changes to the softmax's logits, in every kernel that takes them, forward and gradients
against the float64 numpy reference:
- Gemma 2's logit soft-capping, cap·tanh(scores / cap) before the mask and softmax
  (`logits_soft_cap`);
- GPT-OSS's learned sinks, one logit per head in every row's denominator (`sinks`), with the
  gradient of the sinks themselves.
Both run in dot_product, flash (inside its blockwise loop and custom backward), ring and splash
(interpret mode); `auto` routes them around the kernels that cannot take them."""

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
FEATURES = ("soft_cap", "sinks", "both")


def _sinks(heads):
  """Sink logits from below to above the typical score: some heads barely use theirs, some
  give it most of the mass."""
  return jnp.linspace(1.0, 8.0, heads, dtype=jnp.float32)


def _check(kernel, case, kwargs, feature, atol=2e-6, grad_atol=2e-5, scale_inputs=2.0):
  """`kernel(q, k, v, <the feature's arguments>)` equals the reference, forward and backward
  (with the sinks' own gradient)."""
  q, k, v, d_out, _ = make_inputs(case)
  q, k = q * scale_inputs, k * scale_inputs
  mask = reference_mask(case, kwargs)
  cap = CAP if feature in ("soft_cap", "both") else None
  sinks = _sinks(case.heads) if feature in ("sinks", "both") else None

  def run(q, k, v, sinks):
    extra = {} if sinks is None else {"sinks": sinks}
    return kernel(q, k, v, **extra, **({} if cap is None else {"logits_soft_cap": cap}))

  want, _ = reference.attention_reference(q, k, v, mask=mask, soft_cap=cap, sinks=sinks)
  plain, _ = reference.attention_reference(q, k, v, mask=mask)
  if case.q_len * case.kv_len > 1 or sinks is not None:
    assert np.abs(want - plain).max() > 1e-2  # the feature changes the answer
  np.testing.assert_allclose(jax.jit(run)(q, k, v, sinks), want, atol=atol, rtol=1e-5)
  loss = lambda *args: jnp.sum(run(*args) * d_out)
  grads = jax.jit(jax.grad(loss, (0, 1, 2) if sinks is None else (0, 1, 2, 3)))(q, k, v, sinks)
  want_grads = reference.attention_reference_grads(q, k, v, d_out, mask=mask, soft_cap=cap,
                                                   sinks=sinks)
  want_grads = want_grads[:3] + want_grads[4:]
  for axis, got, exp in zip(("q", "k", "v", "sinks"), grads, want_grads):
    np.testing.assert_allclose(got, exp, atol=grad_atol, rtol=1e-5, err_msg=f"d{axis}")


@pytest.mark.parametrize("feature,name", [
    (feature, name) for feature in FEATURES for name in ("dot_product", "flash",
                                                         "flash_small_blocks")
    if feature != "both" or name == "flash_small_blocks"])  # both: through the block loop
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels_equal_the_reference(feature, name, case):
  _, _, _, _, kwargs = make_inputs(case)
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  if name.startswith("flash"):
    blocks = dict(block_q=16, block_k=32) if name == "flash_small_blocks" else {}
    kernel = functools.partial(kernels.flash_attention, **blocks)
  else:
    kernel = kernels.dot_product_attention
  _check(functools.partial(kernel, **kwargs), case, kwargs, feature)


@pytest.mark.parametrize("feature", FEATURES)
def test_ring_on_four_devices_equals_the_reference(feature):
  case = next(c for c in CASES if c.name == "segments_96")
  _, _, _, _, kwargs = make_inputs(case)
  mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(AxisType.Auto,) * 2)
  ring = functools.partial(kernels.get("ring"), causal=True,
                           segment_ids=kwargs["segment_ids"], block_q=8, block_k=8)
  causal = dict(kwargs, causal=True)
  with jax.set_mesh(mesh):
    split = NamedSharding(mesh, P(None, "sequence"))
    fn = lambda q, k, v, **extra: ring(*(jax.device_put(x, split) for x in (q, k, v)), **extra)
    _check(fn, case.__class__(**{**case.__dict__, "causal": True}), causal, feature)


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("case", [c for c in CASES if c.name in (
    "causal_257_gqa", "cross_100x1000_lengths", "segments_96")], ids=str)
def test_splash_in_interpret_mode(feature, case):
  _, _, _, _, kwargs = make_inputs(case)
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  fn = functools.partial(kernels.get("splash"), interpret=True, **kwargs)
  _check(fn, case, kwargs, feature)


@pytest.mark.parametrize("feature", ["logits_soft_cap", "sinks"])
@pytest.mark.parametrize("platform,q_len,extra,expected", [
    ("gpu", 4096, {}, "flash"),  # cuDNN, Pallas-GPU and jax.nn take neither
    ("gpu", 512, {}, "dot_product"),  # 512 x 512 scores: below AUTO_FLASH_MIN_SCORES
    ("tpu", 4096, {}, "splash"),  # splash takes both (attn_logits_soft_cap, sinks)
    ("tpu", 1, {}, "dot_product"),  # decoding: not xla, which takes neither
    ("tpu", 4096, {"mask": jnp.ones((1, 1), bool)}, "flash"),
    ("cpu", 4096, {}, "flash"),
])
def test_auto_routes_around_kernels_without_the_feature(monkeypatch, feature, platform, q_len,
                                                        extra, expected):
  fake_backend(monkeypatch, platform)
  q = jax.ShapeDtypeStruct((1, q_len, 8, 64), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((1, max(q_len, 512) if q_len > 1 else 4096, 8, 64), jnp.bfloat16)
  value = 50.0 if feature == "logits_soft_cap" else jnp.zeros(8)
  choice = kernels.choose(q, kv, kv, causal=True, **{feature: value}, **extra)
  assert choice == expected and kernels.get(choice).supports(feature)


def test_auto_runs_learned_sinks_through_its_choice():
  q, k, v, _, _ = make_inputs(CASES[1])
  sinks = _sinks(q.shape[2])
  np.testing.assert_allclose(
      kernels.get("auto")(q, k, v, causal=True, sinks=sinks),
      kernels.dot_product_attention(q, k, v, causal=True, sinks=sinks), atol=1e-6)


def test_errors_name_the_argument_and_the_kernels_that_take_it():
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="`logits_soft_cap` must be a positive number"):
    kernels.dot_product_attention(q, q, q, logits_soft_cap=0.0)
  with pytest.raises(ValueError, match="does not take \\['logits_soft_cap'\\]. Kernels that "
                     "do: .*dot_product.*flash"):
    kernels.get("xla")(q, q, q, logits_soft_cap=30.0)
  with pytest.raises(ValueError, match=r"one learned logit per query head, shape \[heads\] = "
                     r"\(2,\) \(or one scalar for all\), got \(4,\).*`sink_tokens`"):
    kernels.flash_attention(q, q, q, sinks=jnp.zeros(4))
  with pytest.raises(ValueError, match="`sinks` must be floating-point"):
    kernels.dot_product_attention(q, q, q, sinks=jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match="does not take \\['sinks'\\]. Kernels that do: "
                     ".*dot_product.*flash.*ring.*splash"):
    kernels.get("cudnn" if jax.default_backend() == "gpu" else "xla")(q, q, q, sinks=jnp.zeros(2))
  for kernel, has in (("flash", True), ("splash", True), ("ring", True), ("xla", False)):
    assert ("soft_cap" in kernels.get(kernel).capabilities) == has
    assert ("learned_sinks" in kernels.get(kernel).capabilities) == has
