"""Softmax dot-product attention (Vaswani et al. 2017), written for one head."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels import masks as masks_lib
from attention_jax.kernels._lift import heads_last, vmap_heads

# A finite "minus infinity" for masked scores: exp(MASK_VALUE - max) underflows to 0 without
# the NaNs that -inf gives in (-inf) - (-inf) and in gradients.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attend_with_scores(scores, value, allowed, dropout_key, dropout_rate: float, sink=None):
  """Softmax over keys, optional dropout, weighted sum of values. One head.

  Args:
    scores: [q_len, kv_len] logits (already scaled and biased), float32 or wider.
    value: [kv_len, dv].
    allowed: None or boolean, broadcastable to [q_len, kv_len]. Rows with no allowed key
      give zeros.
    dropout_key: PRNG key, or None for no dropout.
    dropout_rate: probability of dropping an attention weight.
    sink: None or a scalar logit that joins every row's softmax denominator and adds nothing
      to the output (a learned sink: the row's weights then sum to less than 1).

  Returns:
    (output [q_len, dv] in value's dtype, weights [q_len, kv_len] before dropout).
  """
  if allowed is not None:
    scores = jnp.where(allowed, scores, MASK_VALUE)
  if sink is None:
    weights = jax.nn.softmax(scores, axis=-1)
  else:
    sink = sink.astype(scores.dtype)
    top = jax.lax.stop_gradient(jnp.maximum(scores.max(axis=-1, keepdims=True), sink))
    exp = jnp.exp(scores - top)
    weights = exp / (exp.sum(axis=-1, keepdims=True) + jnp.exp(sink - top))
  if allowed is not None:
    weights = jnp.where(allowed, weights, 0.0)  # fully masked rows: zeros, not uniform
  dropped = weights
  if dropout_key is not None:
    keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
    dropped = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("qk,kd->qd", dropped.astype(value.dtype), value,
                   preferred_element_type=scores.dtype)
  return out.astype(value.dtype), weights


def attention_scores(query, key, *, scale=None):
  """Raw scores q·kᵀ · scale before any softmax, [batch, heads, q_len, kv_len] float32.

  For inspection and teaching (the article's score tables); kernels never materialise this for
  long sequences. `scale=1.0` gives the plain dot product.
  """
  _checks.check_qkv(query, key, key)
  h, kh = query.shape[2], key.shape[2]
  scale = _checks.default_scale(scale, query.shape[-1])
  q = query.reshape(query.shape[:2] + (kh, h // kh, query.shape[-1]))
  scores = jnp.einsum("bqkgd,bskd->bkgqs", q, key, preferred_element_type=jnp.float32)
  return scores.reshape(query.shape[0], h, query.shape[1], key.shape[1]) * scale


def prepare_common(query, key, value, *, bias, mask, causal, kv_lengths, segment_ids,
                   local_window, dropout_rate, dropout_rng, deterministic,
                   check_head_dims=True):
  """Validates the arguments every dense kernel shares and builds what the heads need.

  Returns:
    (bias4 or None, allowed4 or None, dropout keys [batch, heads] or None), where bias4 and
    allowed4 broadcast to [batch, heads, q_len, kv_len].
  """
  b, tq, h, tk, _, _, _ = _checks.check_qkv(query, key, value, check_head_dims)
  target = (b, h, tq, tk)
  _checks.check_mask_dtype(mask)
  allowed = masks_lib.dense_mask(
      b, tq, tk, mask=_checks.as_rank4(mask, "mask", target), causal=causal,
      kv_lengths=_checks.check_lengths(kv_lengths, "kv_lengths", b),
      segment_ids=segment_ids, local_window=local_window)
  bias4 = _checks.as_rank4(bias, "bias", target)
  keys = None
  if _checks.check_dropout(dropout_rate, dropout_rng, deterministic):
    keys = jax.random.split(dropout_rng, (b, h))
  return bias4, allowed, keys


def dot_product_attention(query, key, value, *, bias=None, mask=None, causal=False,
                          kv_lengths=None, segment_ids=None, local_window=None, scale=None,
                          logits_soft_cap=None, sinks=None, dropout_rate=0.0,
                          dropout_rng=None, deterministic=False, return_weights=False):
  """Scaled dot-product attention: softmax(q·kᵀ · scale + bias) · v, one head vmapped.

  Args:
    query: [batch, q_len, heads, head_dim].
    key: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0 (GQA/MQA without
      repeating K/V).
    value: [batch, kv_len, kv_heads, value_dim].
    bias: additive float bias broadcastable to [batch, heads, q_len, kv_len].
    mask: boolean, broadcastable to [batch, heads, q_len, kv_len]; True = may attend.
    causal: query i may attend key j iff j <= i + (kv_len - q_len) (aligned bottom-right,
      as a KV cache or segment memory needs).
    kv_lengths: int [batch]; keys at positions >= kv_lengths[b] are padding.
    segment_ids: int [batch, length] (self-attention) or a pair (q_ids [batch, q_len],
      kv_ids [batch, kv_len]); tokens attend only within their own segment.
    local_window: int w or (left, right): keys within that distance of the aligned diagonal.
    scale: score scale; default 1/sqrt(head_dim). `scale=1.0` is the plain dot product.
    logits_soft_cap: c > 0 caps the scaled scores at ±c, c·tanh(scores / c), before the bias
      and the mask (Gemma 2); None: no cap.
    sinks: [heads] learned sink logits (GPT-OSS; a scalar is every head's): each joins its
      head's softmax denominator as a key whose value is zero, so a row may put its
      attention mass nowhere.
    dropout_rate: dropout on the attention weights; needs `dropout_rng` unless deterministic.
    deterministic: disables dropout.
    return_weights: also return the softmax weights [batch, heads, q_len, kv_len] (before
      dropout), e.g. for visualisation.

  Returns:
    [batch, q_len, heads, value_dim] in query's dtype (and the weights if asked). Rows whose
    every key is masked give zeros.
  """
  sinks = _checks.check_sinks(sinks, query.shape[2])
  bias4, allowed4, keys = prepare_common(
      query, key, value, bias=bias, mask=mask, causal=causal, kv_lengths=kv_lengths,
      segment_ids=segment_ids, local_window=local_window, dropout_rate=dropout_rate,
      dropout_rng=dropout_rng, deterministic=deterministic)
  scale = _checks.default_scale(scale, query.shape[-1])
  cap = _checks.check_soft_cap(logits_soft_cap)
  acc = _checks.accum_dtype(query, key)

  def one_head(q, k, v, bias, allowed, dropout_key, sink):
    scores = jnp.einsum("qd,kd->qk", q, k, preferred_element_type=acc) * scale
    if cap is not None:
      scores = cap * jnp.tanh(scores / cap)
    if bias is not None:
      scores = scores + bias.astype(acc)
    return attend_with_scores(scores, v, allowed, dropout_key, dropout_rate, sink)

  out, weights = vmap_heads(one_head, query, key, value, bias4, allowed4, keys,
                            _checks.sinks_per_head(sinks))
  out = heads_last(out).astype(query.dtype)
  return (out, weights) if return_weights else out
