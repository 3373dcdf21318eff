"""linear, retention and performer against the explicit quadratic form: forward, gradients,
causal and not, padding, packed segments, GQA, bf16, and prefill + decoding = the full pass."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from attention_jax import kernels
from tests.kernels import reference
from tests.kernels.cases import CASES, make_inputs
from tests.kernels.test_softmax_kernels import reference_mask

LINEAR_CASES = [c for c in CASES if c.name in (  # causal and not; padding; segments; GQA
    "causal_257_gqa", "causal_q_longer_than_kv", "zero_length_row", "segments_96",
    "causal_segments_lengths")]


def elu1(x):
  return jnp.where(x > 0, x + 1.0, jnp.exp(jnp.minimum(x, 0.0)))


def performer_reference_features(q, k, projection, scale, real):
  """FAVOR+ features with the kernel's stabilisers (constants: no gradient), written out."""
  expo = lambda x: (jnp.einsum("bthd,md->bthm", x * np.sqrt(scale), projection)
                    - 0.5 * scale * jnp.sum(x * x, -1, keepdims=True))
  qe, ke = expo(q), expo(k)
  shift = jnp.where(real[:, :, None, None], ke, -jnp.inf).max(axis=(1, 2, 3))
  shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
  return (jnp.exp(qe - jax.lax.stop_gradient(qe.max(-1, keepdims=True))),
          jnp.exp(ke - shift[:, None, None, None]))


def quadratic_reference(kernel, q, k, v, allowed, *, causal, real, log_decay=None, **options):
  """The kernel named `kernel` as its explicit quadratic form, [b, q_len, h, dv] float32."""
  q, k = q.astype(jnp.float32), k.astype(jnp.float32)
  b, tq, h, d = q.shape
  tk = k.shape[1]
  if kernel == "linear":
    num, den, _ = reference.linear_family_reference(elu1(q), elu1(k), v, allowed)
    return num / (den + 1e-6)[..., None]
  if kernel == "performer":
    projection = kernels.orthogonal_features(options.get("feature_rng", 0),
                                             options.get("num_features", 256), d)
    qf, kf = performer_reference_features(q, k, projection, 1 / np.sqrt(d), real)
    num, den, _ = reference.linear_family_reference(qf, kf, v, allowed)
    return jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
  assert kernel == "retention"
  if log_decay is None:
    log_decay = jnp.broadcast_to(jnp.log(kernels.retnet_decays(h)), (1, tk, h))
  log_decay = log_decay * real[..., None]  # padding keys do not decay the state
  weights = reference.decay_weights(log_decay, tq, tk, causal)
  num, den, count = reference.linear_family_reference(q / np.sqrt(d), k, v, allowed, weights)
  c = jnp.sqrt(jnp.where(count > 0, count, 1.0))
  return num / (c * jnp.maximum(jnp.abs(den) / c, 1.0))[..., None]


def real_keys(case):
  if case.kv_lengths is None:
    return jnp.ones((case.batch, case.kv_len), bool)
  return jnp.arange(case.kv_len)[None] < jnp.asarray(case.kv_lengths)[:, None]


def linear_inputs(case, dtype=jnp.float32):
  q, k, v, d_out, kwargs = make_inputs(case, dtype)
  kwargs = {n: x for n, x in kwargs.items() if n != "local_window"}
  return q, k, v, d_out, kwargs, jnp.asarray(reference_mask(case, kwargs))


@pytest.mark.parametrize("case", LINEAR_CASES, ids=str)
@pytest.mark.parametrize("kernel", ["linear", "retention", "performer"])
def test_forward_and_gradients_against_quadratic_form(kernel, case):
  q, k, v, d_out, kwargs, allowed = linear_inputs(case)
  fn = jax.jit(functools.partial(kernels.get(kernel), chunk_size=16, **kwargs))
  ref = jax.jit(functools.partial(quadratic_reference, kernel, allowed=allowed,
                                  causal=case.causal, real=real_keys(case)))
  np.testing.assert_allclose(fn(q, k, v), ref(q, k, v), atol=2e-5, rtol=1e-4)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * d_out)
  grads = jax.jit(jax.grad(loss(fn), (0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(ref), (0, 1, 2)))(q, k, v)
  for name, got, exp in zip("qkv", grads, want):
    scale = float(jnp.abs(exp).max()) + 1e-6
    np.testing.assert_allclose(got / scale, exp / scale, atol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("kernel", ["linear", "retention", "performer"])
def test_not_causal_with_more_queries_than_keys(kernel):
  """Cross-attention with q_len > kv_len (query i aligned with key i for the decay)."""
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.standard_normal((2, 11, 2, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, 5, 1, 8)), jnp.float32) for _ in range(2))
  lengths = jnp.asarray([5, 3])
  real = jnp.arange(5)[None] < lengths[:, None]
  allowed = jnp.broadcast_to(real[:, None, None, :], (2, 1, 11, 5))
  got = kernels.get(kernel)(q, k, v, kv_lengths=lengths, chunk_size=4)
  want = quadratic_reference(kernel, q, k, v, allowed, causal=False, real=real)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", ["linear", "retention", "performer"])
def test_bfloat16_inputs_accumulate_in_float32(kernel):
  case = next(c for c in CASES if c.name == "causal_segments_lengths")
  q, k, v, _, kwargs, allowed = linear_inputs(case, jnp.bfloat16)
  out = jax.jit(functools.partial(kernels.get(kernel), **kwargs))(q, k, v)
  assert out.dtype == jnp.bfloat16
  want = jax.jit(functools.partial(quadratic_reference, kernel, causal=True,
                                   real=real_keys(case)))(q, k, v, allowed)
  scale = float(jnp.abs(want).max())
  np.testing.assert_allclose(np.asarray(out, np.float32) / scale, want / scale, atol=2e-2)


@pytest.mark.parametrize("kernel", ["linear", "retention", "performer"])
def test_prefill_then_decoding_one_token_at_a_time_equals_the_full_pass(kernel):
  """The recurrent form: a state after a prefill of 37 tokens, then 11 single-token steps
  (each O(1) in the length), give the outputs of one causal pass over all 48 (GQA 4/2)."""
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 48, h, 16)), jnp.float32) for h in (4, 2, 2))
  fn = kernels.get(kernel)
  full = fn(q, k, v, causal=True)
  out, state = fn(q[:, :37], k[:, :37], v[:, :37], causal=True, return_state=True)
  assert isinstance(state, kernels.RecurrentState)
  outs = [out]
  step = jax.jit(lambda q, k, v, state: fn(q, k, v, causal=True, state=state,
                                            return_state=True))
  for t in range(37, 48):
    out, state = step(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], state)
    outs.append(out)
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-4)
  # From a zeroed state (a decoder's fresh cache), even with keys whose features would
  # underflow without their own stabiliser.
  big = k * 12.0
  zero = jax.tree.map(jnp.zeros_like, state)
  prefill, _ = fn(q, big, v, causal=True, state=zero, return_state=True)
  np.testing.assert_allclose(prefill, fn(q, big, v, causal=True), atol=2e-5, rtol=1e-4)


def test_retention_with_a_data_dependent_gate():
  """Gated decay (one log α per key and head, as gated linear attention): forward and the
  gradient through the gate, against the explicit weights exp(Σ log α)."""
  case = next(c for c in CASES if c.name == "causal_segments_lengths")
  q, k, v, d_out, kwargs, allowed = linear_inputs(case)
  gate = jax.nn.log_sigmoid(jnp.asarray(
      np.random.default_rng(5).standard_normal((case.batch, case.kv_len, case.heads)) + 2.0,
      jnp.float32))
  fn = jax.jit(lambda gate: kernels.retention_attention(q, k, v, log_decay=gate,
                                                        chunk_size=16, **kwargs))
  ref = jax.jit(lambda gate: quadratic_reference("retention", q, k, v, allowed, causal=True,
                                                 real=real_keys(case), log_decay=gate))
  np.testing.assert_allclose(fn(gate), ref(gate), atol=2e-5, rtol=1e-4)
  g_got = jax.grad(lambda g: jnp.sum(fn(g) * d_out))(gate)
  g_want = jax.grad(lambda g: jnp.sum(ref(g) * d_out))(gate)
  np.testing.assert_allclose(g_got, g_want, atol=1e-4, rtol=1e-3)


def test_performer_estimate_approaches_softmax_as_features_grow():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 64, 2, 16)) * 0.7, jnp.float32)
             for _ in range(3))
  exact = kernels.dot_product_attention(q, k, v)
  errors = []
  for m in (16, 128, 1024):
    err = [float(jnp.mean(jnp.abs(kernels.performer_attention(
        q, k, v, num_features=m, feature_rng=seed) - exact))) for seed in range(4)]
    errors.append(np.mean(err))
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  # 0.059, 0.044 (m=64), 0.029 (256), 0.021: slower than 1/sqrt(m) at these m (an iid-feature
  # numpy estimate of the same attention gives 0.060, 0.041, 0.029, 0.023).
  assert errors[-1] < errors[0] / 2.5, errors


@pytest.mark.parametrize("make_rng", [int, jax.random.key], ids=["seed", "key"])
def test_performer_redraws_features_with_a_new_key(make_rng):
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 8, 1, 8)), jnp.float32) for _ in range(3))
  a = kernels.performer_attention(q, k, v, feature_rng=make_rng(1))
  b = kernels.performer_attention(q, k, v, feature_rng=make_rng(2))
  assert float(jnp.abs(a - b).max()) > 1e-3
  np.testing.assert_array_equal(a, kernels.performer_attention(q, k, v, feature_rng=make_rng(1)))
  rows = kernels.orthogonal_features(make_rng(0), 32, 16)  # two orthogonal blocks of 16
  gram = rows[:16] @ rows[:16].T
  np.testing.assert_allclose(gram - jnp.diag(jnp.diag(gram)), 0.0, atol=1e-4)


@pytest.mark.parametrize("kernel", ["linear", "retention", "performer"])
def test_recurrent_kernels_reject_what_they_cannot_do(kernel):
  q = jnp.ones((2, 5, 2, 8))
  fn = kernels.get(kernel)
  with pytest.raises(ValueError, match="belongs to a causal sequence"):
    fn(q, q, q, return_state=True)
  with pytest.raises(ValueError, match="not a \\(q_ids, kv_ids\\) pair"):
    fn(q, q, q, segment_ids=(jnp.zeros((2, 5), int), jnp.zeros((2, 5), int)))
  _, state = fn(q, q, q, causal=True, return_state=True)
  with pytest.raises(ValueError, match="a state from another batch or model"):
    fn(q[:1], q[:1], q[:1], causal=True, state=state)
  with pytest.raises(ValueError, match="`chunk_size` must be >= 1"):
    fn(q, q, q, chunk_size=0)
