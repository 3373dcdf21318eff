"""Additive ("concat") attention scores, one head vmapped.

Bahdanau et al. (2015) score a query against a key with a one-hidden-layer network:
    score(q_i, k_j) = w · tanh(W_q q_i + W_k k_j).
The article's "concatenated dot product" `Concat(e_i, e_j)ᵀ W` is the same network without the
tanh. That is a mistake worth knowing: splitting W = [w_q; w_k] gives
    score(e_i, e_j) = e_i·w_q + e_j·w_k,
and a softmax over j removes every term that does not depend on j, so the weights are
softmax_j(e_j·w_k) for EVERY query: the query has no influence at all (see `concat_scores`).
The nonlinearity is what makes additive attention work.

Cost: the tanh is taken over a [q_len, kv_len, hidden] tensor per head, so time and memory are
O(q_len·kv_len·hidden); prefer dot-product kernels for long sequences.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels._lift import heads_last, vmap_heads
from attention_jax.kernels.dot_product import attend_with_scores, prepare_common


def concat_scores(query_emb, key_emb, weight):
  """The article's literal score Concat(e_i, e_j)ᵀ W, for one sequence.

  Args:
    query_emb: [q_len, d]; key_emb: [kv_len, d]; weight: [2 d].

  Returns:
    [q_len, kv_len] scores e_i·W[:d] + e_j·W[d:]. Each row differs from the others only by a
    constant, so softmax over keys gives the same weights for every query.
  """
  d = query_emb.shape[-1]
  if np.shape(weight) != (2 * d,):
    raise ValueError(f"`weight` must have shape [2 * d] = ({2 * d},), got {np.shape(weight)}.")
  return (query_emb @ weight[:d])[:, None] + (key_emb @ weight[d:])[None, :]


def _per_head_param(x, name: str, heads: int, rank: int):
  """Params shared by all heads ([...]) or per head ([heads, ...]) -> [1, 1|heads, ...]."""
  if np.ndim(x) == rank:
    return x[None, None]
  if np.ndim(x) == rank + 1 and np.shape(x)[0] == heads:
    return x[None]
  raise ValueError(f"`{name}` must have rank {rank} (shared by all heads) or shape "
                   f"[heads={heads}, ...] (one per head), got shape {np.shape(x)}.")


def additive_attention(query, key, value, query_kernel, key_kernel, score_vector, *,
                       bias=None, mask=None, causal=False, kv_lengths=None, segment_ids=None,
                       local_window=None, dropout_rate=0.0, dropout_rng=None,
                       deterministic=False, return_weights=False):
  """Bahdanau attention softmax_j(w · tanh(W_q q_i + W_k k_j) + bias) · v.

  Args:
    query: [batch, q_len, heads, d_q]; key: [batch, kv_len, kv_heads, d_k];
      value: [batch, kv_len, kv_heads, d_v].
    query_kernel: W_q, [d_q, hidden] shared by all heads or [heads, d_q, hidden].
    key_kernel: W_k, [d_k, hidden] or [heads, d_k, hidden].
    score_vector: w, [hidden] or [heads, hidden].
    Other arguments as in `dot_product_attention` (no scale: w learns it).

  Returns:
    [batch, q_len, heads, d_v] (and weights [batch, heads, q_len, kv_len] if asked).
  """
  b, tq, h, tk, kh, dq, dv = _checks.check_qkv(query, key, value, match_head_dims=False)
  wq = _per_head_param(query_kernel, "query_kernel", h, 2)
  wk = _per_head_param(key_kernel, "key_kernel", h, 2)
  w = _per_head_param(score_vector, "score_vector", h, 1)
  if (wq.shape[-2] != dq or wk.shape[-2] != key.shape[-1]
      or not wq.shape[-1] == wk.shape[-1] == w.shape[-1]):
    raise ValueError(
        f"additive attention parameters do not fit: query_kernel {np.shape(query_kernel)} "
        f"must be [d_q={dq}, hidden], key_kernel {np.shape(key_kernel)} [d_k="
        f"{key.shape[-1]}, hidden], score_vector {np.shape(score_vector)} [hidden].")
  bias4, allowed4, keys = prepare_common(
      query, key, value, bias=bias, mask=mask, causal=causal, kv_lengths=kv_lengths,
      segment_ids=segment_ids, local_window=local_window, dropout_rate=dropout_rate,
      dropout_rng=dropout_rng, deterministic=deterministic, check_head_dims=False)

  acc = _checks.accum_dtype(query, key, query_kernel)

  def one_head(q, k, v, wq, wk, w, bias, allowed, dropout_key):
    hq = jnp.dot(q, wq, preferred_element_type=acc)  # [q_len, hidden]
    hk = jnp.dot(k, wk, preferred_element_type=acc)  # [kv_len, hidden]
    scores = jnp.tanh(hq[:, None, :] + hk[None, :, :]) @ w.astype(acc)
    if bias is not None:
      scores = scores + bias.astype(acc)
    return attend_with_scores(scores, v, allowed, dropout_key, dropout_rate)

  out, weights = vmap_heads(one_head, query, key, value, wq, wk, w, bias4, allowed4, keys)
  out = heads_last(out).astype(query.dtype)
  return (out, weights) if return_weights else out
