"""Transformer-XL relative-position attention (Dai et al. 2019), one head vmapped.

Keys and values cover [memory; current segment] (kv_len = mem_len + q_len), so the causal mask
is aligned bottom-right. The score of query i and key j is the paper's four terms
    (a) q_i·k_j  (b) q_i·r_{i-j}  (c) u·k_j  (d) v·r_{i-j}
  = (q_i + u)·k_j + (q_i + v)·r_{i-j},
with r the (projected) sinusoidal embedding of the distance i - j and u, v learned global
content and position biases. Term (b)+(d) is computed for all kv_len distances as one matmul
and realigned with `rel_shift` (O(q_len·kv_len)); `gather_relative` does the same by indexing
with i - j, the reference the tests hold `rel_shift` equal to.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels._lift import heads_last, vmap_heads
from attention_jax.kernels.dot_product import attend_with_scores, prepare_common


def rel_shift(x):
  """Realigns scores by distance to scores by key position (the Transformer-XL trick).

  Args:
    x: [q_len, kv_len]; column c holds the score for distance kv_len - 1 - c.

  Returns:
    [q_len, kv_len] with out[i, j] = x[i, j + q_len - 1 - i], the score for distance
    i + (kv_len - q_len) - j. Valid where j <= i + kv_len - q_len (the causal part); other
    entries are garbage and must be masked.
  """
  q_len, kv_len = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 0)))  # [q_len, kv_len + 1]
  return padded.reshape(kv_len + 1, q_len)[1:].reshape(q_len, kv_len)


def gather_relative(x):
  """Same result as `rel_shift` on the causal part, by gathering column j + q_len - 1 - i."""
  q_len, kv_len = x.shape
  index = jnp.arange(kv_len)[None, :] + (q_len - 1) - jnp.arange(q_len)[:, None]
  return jnp.take_along_axis(x, jnp.clip(index, 0, kv_len - 1), axis=1)


_REALIGN = {"shift": rel_shift, "gather": gather_relative}


def relative_attention(query, key, value, rel_pos_emb, content_bias, position_bias, *,
                       bias=None, mask=None, kv_lengths=None, segment_ids=None,
                       local_window=None, scale=None, dropout_rate=0.0, dropout_rng=None,
                       deterministic=False, return_weights=False, method="shift"):
  """Causal Transformer-XL attention over [memory; segment].

  Args:
    query: [batch, q_len, heads, d] for the current segment.
    key, value: [batch, kv_len, kv_heads, d|dv] for [memory; segment], kv_len >= q_len.
    rel_pos_emb: [kv_len, heads, d]: projected embeddings of distances kv_len-1, ..., 0 (in
      that order; see `positional.relative_distances`).
    content_bias: u, [heads, d]. position_bias: v, [heads, d].
    method: "shift" (rel_shift, the fast path) or "gather" (index by i - j).
    Other arguments as in `dot_product_attention`; attention is always causal.

  Returns:
    [batch, q_len, heads, dv] (and weights [batch, heads, q_len, kv_len] if asked).
  """
  b, tq, h, tk, _, d, _ = _checks.check_qkv(query, key, value)
  if tk < tq:
    raise ValueError(f"relative attention needs kv_len >= q_len (keys are [memory; segment]), "
                     f"got q_len {tq} and kv_len {tk}.")
  if np.shape(rel_pos_emb) != (tk, h, d):
    raise ValueError(f"`rel_pos_emb` must have shape [kv_len, heads, head_dim] = "
                     f"{(tk, h, d)}, got {np.shape(rel_pos_emb)}.")
  for name, x in (("content_bias", content_bias), ("position_bias", position_bias)):
    if np.shape(x) != (h, d):
      raise ValueError(f"`{name}` must have shape [heads, head_dim] = {(h, d)}, got "
                       f"{np.shape(x)}.")
  if method not in _REALIGN:
    raise ValueError(f"`method` must be one of {sorted(_REALIGN)}, got {method!r}.")
  realign = _REALIGN[method]
  bias4, allowed4, keys = prepare_common(
      query, key, value, bias=bias, mask=mask, causal=True, kv_lengths=kv_lengths,
      segment_ids=segment_ids, local_window=local_window, dropout_rate=dropout_rate,
      dropout_rng=dropout_rng, deterministic=deterministic)
  scale = _checks.default_scale(scale, d)

  acc = _checks.accum_dtype(query, key)

  def one_head(q, k, v, r, u, pos_bias, bias, allowed, dropout_key):
    content = jnp.einsum("qd,kd->qk", q + u.astype(q.dtype), k, preferred_element_type=acc)
    by_distance = jnp.einsum("qd,rd->qr", q + pos_bias.astype(q.dtype), r.astype(q.dtype),
                             preferred_element_type=acc)
    scores = (content + realign(by_distance)) * scale
    if bias is not None:
      scores = scores + bias.astype(acc)
    return attend_with_scores(scores, v, allowed, dropout_key, dropout_rate)

  r4 = jnp.asarray(rel_pos_emb).transpose(1, 0, 2)[None]  # [1, heads, kv_len, d]
  out, weights = vmap_heads(one_head, query, key, value, r4, jnp.asarray(content_bias)[None],
                            jnp.asarray(position_bias)[None], bias4, allowed4, keys)
  out = heads_last(out).astype(query.dtype)
  return (out, weights) if return_weights else out
