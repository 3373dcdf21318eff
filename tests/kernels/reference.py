"""Plain numpy (float64) references for the attention kernels, independent of the package."""

import numpy as np


def mask_reference(batch, q_len, kv_len, *, causal=False, kv_lengths=None, segment_ids=None,
                   local_window=None, sink_tokens=0):
  """Boolean [batch, 1, q_len, kv_len] built with explicit loops; the first `sink_tokens` keys are
  exempt from the window's left reach."""
  if isinstance(local_window, int):
    local_window = (local_window, local_window)
  allowed = np.ones((batch, 1, q_len, kv_len), bool)
  offset = kv_len - q_len
  for b in range(batch):
    for i in range(q_len):
      for j in range(kv_len):
        ok = True
        if causal:
          ok &= j <= i + offset
        if local_window is not None:
          ok &= (i + offset - local_window[0] <= j or j < sink_tokens)
          ok &= j <= i + offset + local_window[1]
        if kv_lengths is not None:
          ok &= j < kv_lengths[b]
        if segment_ids is not None:
          q_ids, kv_ids = (segment_ids if isinstance(segment_ids, tuple)
                           else (segment_ids, segment_ids))
          ok &= q_ids[b][i] == kv_ids[b][j]
        allowed[b, 0, i, j] = ok
  return allowed


def _expand(q, k, v, bias, mask, scale, soft_cap=None):
  """Scores cap * tanh(q·k · scale / cap) (with `soft_cap`) + bias, and their mask."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, tq, h, d = q.shape
  kh = k.shape[2]
  k = np.repeat(k, h // kh, axis=2)
  v = np.repeat(v, h // kh, axis=2)
  scale = 1 / np.sqrt(d) if scale is None else scale
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if soft_cap is not None:
    s = soft_cap * np.tanh(s / soft_cap)
  if bias is not None:
    s = s + np.broadcast_to(np.asarray(bias, np.float64), s.shape)
  allowed = np.ones(s.shape, bool) if mask is None else np.broadcast_to(mask, s.shape)
  return q, k, v, s, allowed, scale


def _softmax(s, allowed, sinks=None):
  """Weights [b, h, q, k] and, with learned `sinks` [h] (a logit per head in every row's
  denominator), the sinks' own weights [b, h, q]."""
  s = np.where(allowed, s, -np.inf)
  m = np.max(s, axis=-1, keepdims=True)
  sink = None if sinks is None else np.asarray(sinks, np.float64)[None, :, None, None]
  if sink is not None:
    m = np.maximum(m, sink)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.where(allowed, np.exp(s - m), 0.0)
  den = e.sum(-1, keepdims=True)
  if sink is not None:
    den = den + np.exp(sink - m)
  w = np.where(den > 0, e / np.where(den > 0, den, 1.0), 0.0)
  return w, (None if sink is None else (np.exp(sink - m) / den)[..., 0])


def attention_reference(q, k, v, *, bias=None, mask=None, scale=None, soft_cap=None,
                        sinks=None):
  """Softmax attention (Gemma 2's logit soft-capping with `soft_cap`, GPT-OSS's learned
  `sinks` [heads]); returns (out [b, q_len, h, dv], weights [b, h, q_len, kv_len])."""
  q, k, v, s, allowed, scale = _expand(q, k, v, bias, mask, scale, soft_cap)
  w, _ = _softmax(s, allowed, sinks)
  return np.einsum("bhqk,bkhd->bqhd", w, v), w


def attention_reference_grads(q, k, v, d_out, *, bias=None, mask=None, scale=None,
                              soft_cap=None, sinks=None):
  """Analytic gradients of sum(out * d_out): (dq, dk, dv, dbias-as-[b, h, q, k]), and with
  `sinks` also dsinks [h]."""
  kh = np.shape(k)[2]
  q64, k64, v64, s, allowed, scale = _expand(q, k, v, bias, mask, scale, soft_cap)
  w, sink_w = _softmax(s, allowed, sinks)
  g = np.asarray(d_out, np.float64)
  dw = np.einsum("bqhd,bkhd->bhqk", g, v64)
  ds = w * (dw - np.sum(dw * w, axis=-1, keepdims=True))
  ds_raw = ds  # through the cap: d/dx cap * tanh(x / cap) = 1 - tanh(x / cap)^2
  if soft_cap is not None:
    capped = s if bias is None else s - np.broadcast_to(np.asarray(bias, np.float64), s.shape)
    ds_raw = ds * (1.0 - np.square(capped / soft_cap))
  dq = np.einsum("bhqk,bkhd->bqhd", ds_raw, k64) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds_raw, q64) * scale
  dv = np.einsum("bhqk,bqhd->bkhd", w, g)

  def fold_groups(x):  # sum the query heads that share one kv head
    b, t, h, d = x.shape
    return x.reshape(b, t, kh, h // kh, d).sum(3)

  if sinks is None:
    return dq, fold_groups(dk), fold_groups(dv), ds
  out = np.einsum("bhqk,bkhd->bqhd", w, v64)  # d out / d sink = -sink weight * out
  dsinks = -np.einsum("bhq,bqhd,bqhd->h", sink_w, out, g)
  return dq, fold_groups(dk), fold_groups(dv), ds, dsinks


def reduce_to_shape(x, shape):
  """Sums a broadcast gradient back to `shape` (the bias's own shape)."""
  shape4 = (1,) * (x.ndim - len(shape)) + tuple(shape)
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape4)) if b == 1 and a != 1)
  return x.sum(axis=axes, keepdims=True).reshape(shape)


# --- The linear-cost kernels: the explicit quadratic form, in jax.numpy so it can be
# differentiated (an independent formulation of the chunkwise / recurrent kernels).

def decay_weights(log_decay, q_len, kv_len, causal):
  """[batch|1, heads, q_len, kv_len] weights exp(Σ_{r=j+1..i'} log α_r) with i' the query's
  aligned key position (i + kv_len - q_len when causal, i when not); for j > i' (not causal) the
  product runs over r = i'..j-1. log_decay: [batch|1, kv_len, heads]."""
  import jax.numpy as jnp
  offset = kv_len - q_len if causal else 0
  cs = jnp.cumsum(jnp.moveaxis(jnp.asarray(log_decay, jnp.float32), -1, 1), axis=-1)  # [b,h,T]
  cs = jnp.concatenate([jnp.zeros(cs.shape[:-1] + (1,)), cs], axis=-1)  # cs[..., n] = Σ_{<n}
  pos = jnp.clip(jnp.arange(q_len) + offset, -1, kv_len - 1)
  j = jnp.arange(kv_len)
  at_query = jnp.take(cs, pos + 1, axis=-1)[..., :, None]  # Σ_{r<=i'}
  at_key = cs[..., None, j + 1]  # Σ_{r<=j}
  before = at_query - at_key  # j <= i': Σ_{r=j+1..i'}
  after = cs[..., None, j] - jnp.take(cs, pos, axis=-1)[..., :, None]  # j > i': Σ_{r=i'..j-1}
  if causal:  # keys after the query are masked anyway: weight 0, not an overflow
    after = jnp.full_like(after, -jnp.inf)
  return jnp.exp(jnp.where(j[None, :] <= pos[:, None], before, after))


def linear_family_reference(q_features, k_features, value, allowed, weights=None):
  """(num [b, q_len, h, dv], den [b, q_len, h], count [b, q_len, h]) of the weighted sums
  Σ_s w_ts (φq_t·φk_s) v_s, Σ_s w_ts (φq_t·φk_s) and Σ_s w_ts over allowed keys."""
  import jax.numpy as jnp
  h, kh = q_features.shape[2], k_features.shape[2]
  k = jnp.repeat(k_features, h // kh, axis=2)
  v = jnp.repeat(value, h // kh, axis=2).astype(jnp.float32)
  w = jnp.asarray(allowed, jnp.float32)
  if weights is not None:
    w = w * weights
  a = jnp.einsum("bqhf,bkhf->bhqk", q_features, k) * w
  num = jnp.einsum("bhqk,bkhd->bqhd", a, v)
  den = a.sum(-1).transpose(0, 2, 1)
  count = jnp.broadcast_to(w, a.shape).sum(-1).transpose(0, 2, 1)
  return num, den, count
