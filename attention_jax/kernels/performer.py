"""Performer's FAVOR+ (Choromanski et al. 2021): softmax attention estimated with positive
orthogonal random features, at linear cost in length.

exp(x·y) = E_ω[φ(x) φ(y)] with φ(x) = exp(ω·x - |x|²/2) and ω ~ N(0, I), so with m features
softmax(q·kᵀ·scale) ≈ linear attention with φ on q·scale^½ and k·scale^½. Orthogonal blocks
of ω lower the estimate's variance; its error falls as m grows. The features are a fixed
draw from `feature_rng`: pass a new key (or seed) to redraw them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from attention_jax.kernels import _checks
from attention_jax.kernels import _recurrent


def orthogonal_features(rng, num_features: int, dim: int):
  """[num_features, dim] rows: orthogonal within each block of `dim`, with chi(dim) norms so
  each row is marginally N(0, I). `rng` is an int seed (drawn with numpy once and cached: no
  QR to compile) or a PRNG key (drawn with jax.random, e.g. a key traced inside jit)."""
  if isinstance(rng, int):
    return jnp.asarray(_orthogonal_features_numpy(rng, num_features, dim))
  blocks = []
  keys = jax.random.split(rng, -(-num_features // dim) + 1)
  for block_key in keys[:-1]:
    q, _ = jnp.linalg.qr(jax.random.normal(block_key, (dim, dim), jnp.float32))
    blocks.append(q.T)
  norms = jnp.linalg.norm(jax.random.normal(keys[-1], (num_features, dim), jnp.float32), axis=1)
  return jnp.concatenate(blocks)[:num_features] * norms[:, None]


@functools.lru_cache(maxsize=64)
def _orthogonal_features_numpy(seed: int, num_features: int, dim: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  blocks = [np.linalg.qr(rng.standard_normal((dim, dim)))[0].T
            for _ in range(-(-num_features // dim))]
  norms = np.linalg.norm(rng.standard_normal((num_features, dim)), axis=1)
  return (np.concatenate(blocks)[:num_features] * norms[:, None]).astype(np.float32)


def _exponent(x, projection):
  """ω·x - |x|²/2 for x [..., d]: [..., m]."""
  return (jnp.einsum("...d,md->...m", x, projection)
          - 0.5 * jnp.sum(jnp.square(x), axis=-1, keepdims=True))


def performer_attention(query, key, value, *, causal=False, kv_lengths=None, segment_ids=None,
                        scale=None, num_features=256, feature_rng=0, chunk_size=64,
                        state=None, return_state=False):
  """FAVOR+ estimate of softmax attention with `num_features` positive orthogonal features.

  Args:
    query, key, value, causal, kv_lengths, segment_ids, chunk_size, state, return_state: as
      `linear_attention`.
    scale: the softmax scale it approximates, default 1/sqrt(head_dim).
    num_features: m, the number of random features (more: closer to softmax, cost O(T·m·d)).
    feature_rng: an int seed or a PRNG key for ω; a new one redraws the features.

  Returns:
    [batch, q_len, heads, value_dim] in query's dtype (and the state if asked).
  """
  b, _, h, tk, _, d, dv = _checks.check_qkv(query, key, value)
  if num_features < 1:
    raise ValueError(f"`num_features` must be >= 1, got {num_features}.")
  _recurrent.check_state(state, return_state, causal, b, h, num_features, dv)
  projection = orthogonal_features(feature_rng, num_features, d)
  root = jnp.sqrt(_checks.default_scale(scale, d))
  q = query.astype(jnp.float32) * root
  k = key.astype(jnp.float32) * root
  # Stabilisers: a per-query max (cancels in num/den) and one max per batch row over the real
  # keys (cancels too; a state made with an older max is rescaled to the new one).
  q_exp = _exponent(q, projection)
  q_features = jnp.exp(q_exp - lax.stop_gradient(q_exp.max(-1, keepdims=True)))
  k_exp = _exponent(k, projection)
  real = jnp.ones((b, tk), bool)
  if kv_lengths is not None:
    real = jnp.arange(tk)[None] < _checks.check_lengths(kv_lengths, "kv_lengths", b)[:, None]
  k_max = jnp.where(real[..., None, None], k_exp, -jnp.inf).max(axis=(1, 2, 3))
  k_max = lax.stop_gradient(jnp.where(jnp.isfinite(k_max), k_max, 0.0))  # [batch]
  if state is not None:  # a state that holds no key yet (a zeroed cache) has no shift
    empty = ~jnp.any(state.k_sum != 0, axis=(1, 2))
    k_max = jnp.where(empty, k_max, jnp.maximum(k_max, state.shift[:, 0]))
    rescale = jnp.where(empty[:, None], 0.0, jnp.exp(state.shift - k_max[:, None]))
    state = state._replace(kv=state.kv * rescale[..., None, None],
                           k_sum=state.k_sum * rescale[..., None],
                           shift=jnp.broadcast_to(k_max[:, None], (b, h)))
  k_features = jnp.exp(k_exp - k_max[:, None, None, None])
  num, den, _, new_state = _recurrent.recurrent_attention(
      q_features, k_features, value, causal=causal, kv_lengths=kv_lengths,
      segment_ids=segment_ids, state=state, chunk_size=chunk_size)
  if new_state is not None and state is None:
    new_state = new_state._replace(shift=jnp.broadcast_to(k_max[:, None], (b, h)))
  # No epsilon: the stabilising shifts must cancel exactly (a prefill's state continued by
  # decoding steps uses other shifts than one full pass). den is 0 only without visible keys.
  out = jnp.where(den[..., None] > 0, num / jnp.where(den > 0, den, 1.0)[..., None], 0.0)
  out = out.astype(query.dtype)
  return (out, new_state) if return_state else out
