"""Retention (Sun et al. 2023, RetNet): linear attention with a per-head exponential decay.

out_t = Σ_s R_ts v_s / max(|Σ_s R_ts|, 1) with R_ts = (q_t·k_s · scale) γ^(t-s) / c_t and
c_t = sqrt(Σ_s γ^(t-s)) over the keys t may see: RetNet's parallel form with its score
normalisation. The decay is what makes it a strong language model where plain linear attention
is weak. Same chunkwise / recurrent forms as `linear`; without `causal` the decay is two-sided,
γ^|t-s|. A data-dependent per-token decay (`log_decay`, gated linear attention's gate) runs
through the same code.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax.kernels import _checks
from attention_jax.kernels import _recurrent


def retnet_decays(heads: int) -> np.ndarray:
  """RetNet's per-head decays γ_h = 1 - 2^(-5-h), float32 [heads]."""
  return (1.0 - 2.0 ** (-5.0 - np.arange(heads))).astype(np.float32)


def retention_attention(query, key, value, *, causal=False, kv_lengths=None, segment_ids=None,
                        scale=None, decay=None, log_decay=None, chunk_size=64, state=None,
                        return_state=False):
  """Multi-scale retention at linear cost in length.

  Args:
    query: [batch, q_len, heads, head_dim]; key: [batch, kv_len, kv_heads, head_dim];
      value: [batch, kv_len, kv_heads, value_dim].
    causal: query i sees keys j <= i + (kv_len - q_len) with weight γ^(i+offset-j); without
      it every key, with weight γ^|i-j| (query i aligned with key i).
    kv_lengths, segment_ids: padding and packed sequences, as `linear_attention`.
    scale: score scale, default 1/sqrt(head_dim).
    decay: per-head γ in (0, 1], [heads]; default `retnet_decays(heads)`.
    log_decay: instead of `decay`, a data-dependent gate: log γ per key and head,
      [batch, kv_len, heads], values <= 0 (causal only).
    chunk_size, state, return_state: as `linear_attention`.

  Returns:
    [batch, q_len, heads, value_dim] in query's dtype (and the state if asked).
  """
  b, _, h, tk, _, d, dv = _checks.check_qkv(query, key, value)
  _recurrent.check_state(state, return_state, causal, b, h, d, dv)
  if log_decay is None:
    decay = retnet_decays(h) if decay is None else decay
    if np.shape(decay) != (h,):
      raise ValueError(f"`decay` must have shape [heads] = ({h},), got {np.shape(decay)}.")
    log_decay = jnp.log(jnp.asarray(decay, jnp.float32))[None, None]
  else:
    if not causal:
      raise ValueError("a per-token `log_decay` gate is causal only: pass causal=True.")
    if np.shape(log_decay) != (b, tk, h):
      raise ValueError(f"`log_decay` must have shape [batch, kv_len, heads] = {(b, tk, h)}, "
                       f"got {np.shape(log_decay)}.")
  scale = _checks.default_scale(scale, d)
  num, den, count, new_state = _recurrent.recurrent_attention(
      query.astype(jnp.float32) * scale, key, value, causal=causal, kv_lengths=kv_lengths,
      segment_ids=segment_ids, log_decay=log_decay, state=state, chunk_size=chunk_size)
  c = jnp.sqrt(jnp.where(count > 0, count, 1.0))
  out = num / (c * jnp.maximum(jnp.abs(den) / c, 1.0))[..., None]
  out = out.astype(query.dtype)
  return (out, new_state) if return_state else out
