"""Additive (Bahdanau / concat) and Transformer-XL relative attention against numpy."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.test_util import check_grads

from attention_jax import kernels
from tests.kernels import reference


def _softmax_attend(scores, v, allowed):
  s = np.where(allowed, scores, -np.inf)
  m = np.max(s, -1, keepdims=True)
  e = np.where(allowed, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
  den = e.sum(-1, keepdims=True)
  w = np.where(den > 0, e / np.where(den > 0, den, 1), 0)
  return w @ v


def additive_reference(q, k, v, wq, wk, w, allowed):
  b, tq, h, _ = q.shape
  kh = k.shape[2]
  out = np.zeros((b, tq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      p = lambda x: x[hi] if x.ndim == (3 if x is not w else 2) else x
      hq = q[bi, :, hi] @ p(wq)
      hk = k[bi, :, hi // (h // kh)] @ p(wk)
      scores = np.tanh(hq[:, None, :] + hk[None]) @ p(w)
      out[bi, :, hi] = _softmax_attend(scores, v[bi, :, hi // (h // kh)], allowed[bi, 0])
  return out


@pytest.mark.parametrize("per_head", [False, True])
def test_additive_matches_reference(per_head):
  rng = np.random.default_rng(0)
  b, tq, tk, h, kh, dq, dk, hidden = 2, 9, 13, 4, 2, 6, 5, 7
  q = rng.standard_normal((b, tq, h, dq))
  k = rng.standard_normal((b, tk, kh, dk))
  v = rng.standard_normal((b, tk, kh, 3))
  lead = (h,) if per_head else ()
  wq = rng.standard_normal(lead + (dq, hidden))
  wk = rng.standard_normal(lead + (dk, hidden))
  w = rng.standard_normal(lead + (hidden,))
  lengths = (13, 6)
  allowed = reference.mask_reference(b, tq, tk, causal=True, kv_lengths=lengths)
  got = kernels.additive_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v, wq, wk, w)),
                                   causal=True, kv_lengths=jnp.asarray(lengths))
  np.testing.assert_allclose(got, additive_reference(q, k, v, wq, wk, w, allowed), atol=2e-6)


def test_additive_gradients_numerically():
  rng = np.random.default_rng(1)
  args = [rng.standard_normal(s) for s in
          [(1, 4, 2, 3), (1, 5, 2, 3), (1, 5, 2, 2), (3, 4), (3, 4), (4,)]]
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in args]
    fn = lambda *a: kernels.additive_attention(*a, causal=True)
    check_grads(fn, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_concat_score_ignores_the_query():
  """The article's Concat(e_i, e_j)ᵀW: softmax weights are identical for every query."""
  rng = np.random.default_rng(2)
  e = jnp.asarray(rng.standard_normal((5, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal(8), jnp.float32)
  scores = kernels.concat_scores(e, e, w)
  weights = jax.nn.softmax(scores, axis=-1)
  np.testing.assert_allclose(weights, np.broadcast_to(weights[0], weights.shape), atol=1e-6)
  np.testing.assert_allclose(weights[0], jax.nn.softmax(e @ w[4:]), atol=1e-6)
  # Bahdanau's tanh restores the query's influence.
  bahdanau = kernels.additive_attention(
      e[None, :, None], e[None, :, None], e[None, :, None], w[:4, None].repeat(3, 1),
      w[4:, None].repeat(3, 1), jnp.ones(3), return_weights=True)[1][0, 0]
  assert np.abs(bahdanau - bahdanau[0]).max() > 1e-2


def relative_reference(q, k, v, r, u, vb, scale=None):
  """Transformer-XL scores by explicit distance indexing; causal over [memory; segment]."""
  b, tq, h, d = q.shape
  tk = k.shape[1]
  scale = 1 / np.sqrt(d) if scale is None else scale
  out = np.zeros((b, tq, h, v.shape[-1]))
  for bi in range(b):
    for hi in range(h):
      scores = np.zeros((tq, tk))
      allowed = np.zeros((tq, tk), bool)
      for i in range(tq):
        for j in range(tk):
          dist = i + (tk - tq) - j
          if dist < 0:
            continue
          allowed[i, j] = True
          r_dist = r[tk - 1 - dist, hi]  # rows hold distances tk-1, ..., 0
          scores[i, j] = (q[bi, i, hi] @ k[bi, j, hi] + q[bi, i, hi] @ r_dist
                          + u[hi] @ k[bi, j, hi] + vb[hi] @ r_dist) * scale
      out[bi, :, hi] = _softmax_attend(scores, v[bi, :, hi], allowed)
  return out


def relative_inputs(tq, tk, seed=0, b=2, h=3, d=4):
  rng = np.random.default_rng(seed)
  shapes = [(b, tq, h, d), (b, tk, h, d), (b, tk, h, d), (tk, h, d), (h, d), (h, d)]
  return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("tq,tk", [(1, 1), (5, 5), (4, 11), (1, 9), (16, 24)])
def test_rel_shift_equals_gather_on_causal_part(tq, tk):
  x = jnp.asarray(np.random.default_rng(3).standard_normal((tq, tk)))
  causal = np.asarray(kernels.masks.causal_mask(tq, tk))
  np.testing.assert_array_equal(np.where(causal, kernels.rel_shift(x), 0),
                                np.where(causal, kernels.gather_relative(x), 0))


@pytest.mark.parametrize("method", ["shift", "gather"])
@pytest.mark.parametrize("tq,tk", [(6, 6), (5, 12), (1, 8)])
def test_relative_matches_distance_indexed_reference(method, tq, tk):
  args = relative_inputs(tq, tk)
  got = kernels.relative_attention(*(jnp.asarray(a, jnp.float32) for a in args), method=method)
  np.testing.assert_allclose(got, relative_reference(*args), atol=2e-6)


def test_relative_gradients_numerically():
  args = relative_inputs(3, 5, seed=4, b=1, h=2, d=3)
  with jax.enable_x64(True):
    args = [jnp.asarray(a, jnp.float64) for a in args]
    check_grads(kernels.relative_attention, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_relative_padding_mask_and_weights():
  args = [jnp.asarray(a, jnp.float32) for a in relative_inputs(4, 7)]
  out, weights = kernels.relative_attention(*args, kv_lengths=jnp.array([7, 5]),
                                            return_weights=True)
  np.testing.assert_array_equal(weights[1, :, :, 5:], 0.0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  assert np.isfinite(np.asarray(out)).all()
