"""Linearised attention (Katharopoulos et al. 2020, "Transformers are RNNs").

softmax(q·kᵀ) is replaced by φ(q)·φ(k)ᵀ for a positive feature map φ (elu+1 by default), so
out_t = φ(q_t)ᵀ S_t / (φ(q_t)ᵀ z_t + eps) with S_t = Σ_s φ(k_s) v_sᵀ and z_t = Σ_s φ(k_s)
over the keys t may see. The cost is O(T·d²) rather than softmax's O(T²·d): causal training
uses the chunkwise-parallel form, decoding the recurrent one (`state`, `return_state`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels import _recurrent

FEATURE_MAPS: dict[str, Callable] = {
    "elu": lambda x: jax.nn.elu(x) + 1.0,
    "relu": jax.nn.relu,
    "exp": jnp.exp,
}
EPS = 1e-6


def feature_map_fn(feature_map: str | Callable) -> Callable:
  """The feature map φ named `feature_map` (elu = elu+1, relu, exp), or the callable itself."""
  if callable(feature_map):
    return feature_map
  if feature_map not in FEATURE_MAPS:
    raise ValueError(f"unknown feature_map {feature_map!r}; valid: "
                     f"{', '.join(FEATURE_MAPS)}, or a callable.")
  return FEATURE_MAPS[feature_map]


def linear_attention(query, key, value, *, causal=False, kv_lengths=None, segment_ids=None,
                     feature_map: str | Callable = "elu", chunk_size=64, state=None,
                     return_state=False):
  """Linearised attention φ(q)·φ(k)ᵀ, normalised per query, at linear cost in length.

  Args:
    query: [batch, q_len, heads, head_dim]; key: [batch, kv_len, kv_heads, head_dim];
      value: [batch, kv_len, kv_heads, value_dim] (heads % kv_heads == 0).
    causal: query i sees keys j <= i + (kv_len - q_len) (chunkwise-parallel form).
    kv_lengths: int [batch]; keys at positions >= kv_lengths[b] are padding.
    segment_ids: int [batch, length] of packed sequences (contiguous runs; self-attention).
    feature_map: "elu" (elu+1), "relu", "exp" or a callable applied to q and k.
    chunk_size: tokens per chunk of the causal form (cost O(T·C·d + T·d²)).
    state: a RecurrentState to continue from (causal decoding); return_state: also return
      the state after the last key.

  Returns:
    [batch, q_len, heads, value_dim] in query's dtype (and the state if asked). Queries with
    no visible key give zeros.
  """
  b, _, h, _, _, d, dv = _checks.check_qkv(query, key, value)
  _recurrent.check_state(state, return_state, causal, b, h, d, dv)
  phi = feature_map_fn(feature_map)
  num, den, _, new_state = _recurrent.recurrent_attention(
      phi(query.astype(jnp.float32)), phi(key.astype(jnp.float32)), value, causal=causal,
      kv_lengths=kv_lengths, segment_ids=segment_ids, state=state, chunk_size=chunk_size)
  out = (num / (den + EPS)[..., None]).astype(query.dtype)
  return (out, new_state) if return_state else out
