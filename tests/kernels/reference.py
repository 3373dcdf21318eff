"""Plain numpy (float64) references for the attention kernels, independent of the package."""

import numpy as np


def mask_reference(batch, q_len, kv_len, *, causal=False, kv_lengths=None, segment_ids=None,
                   local_window=None):
  """Boolean [batch, 1, q_len, kv_len] built with explicit loops."""
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
          ok &= i + offset - local_window[0] <= j <= i + offset + local_window[1]
        if kv_lengths is not None:
          ok &= j < kv_lengths[b]
        if segment_ids is not None:
          q_ids, kv_ids = (segment_ids if isinstance(segment_ids, tuple)
                           else (segment_ids, segment_ids))
          ok &= q_ids[b][i] == kv_ids[b][j]
        allowed[b, 0, i, j] = ok
  return allowed


def _expand(q, k, v, bias, mask, scale):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, tq, h, d = q.shape
  kh = k.shape[2]
  k = np.repeat(k, h // kh, axis=2)
  v = np.repeat(v, h // kh, axis=2)
  scale = 1 / np.sqrt(d) if scale is None else scale
  s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if bias is not None:
    s = s + np.broadcast_to(np.asarray(bias, np.float64), s.shape)
  allowed = np.ones(s.shape, bool) if mask is None else np.broadcast_to(mask, s.shape)
  return q, k, v, s, allowed, scale


def _softmax(s, allowed):
  s = np.where(allowed, s, -np.inf)
  m = np.max(s, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  e = np.where(allowed, np.exp(s - m), 0.0)
  den = e.sum(-1, keepdims=True)
  return np.where(den > 0, e / np.where(den > 0, den, 1.0), 0.0)


def attention_reference(q, k, v, *, bias=None, mask=None, scale=None):
  """Softmax attention; returns (out [b, q_len, h, dv], weights [b, h, q_len, kv_len])."""
  q, k, v, s, allowed, scale = _expand(q, k, v, bias, mask, scale)
  w = _softmax(s, allowed)
  return np.einsum("bhqk,bkhd->bqhd", w, v), w


def attention_reference_grads(q, k, v, d_out, *, bias=None, mask=None, scale=None):
  """Analytic gradients of sum(out * d_out): (dq, dk, dv, dbias-as-[b, h, q, k])."""
  kh = np.shape(k)[2]
  q64, k64, v64, s, allowed, scale = _expand(q, k, v, bias, mask, scale)
  w = _softmax(s, allowed)
  g = np.asarray(d_out, np.float64)
  dw = np.einsum("bqhd,bkhd->bhqk", g, v64)
  ds = w * (dw - np.sum(dw * w, axis=-1, keepdims=True))
  dq = np.einsum("bhqk,bkhd->bqhd", ds, k64) * scale
  dk = np.einsum("bhqk,bqhd->bkhd", ds, q64) * scale
  dv = np.einsum("bhqk,bqhd->bkhd", w, g)

  def fold_groups(x):  # sum the query heads that share one kv head
    b, t, h, d = x.shape
    return x.reshape(b, t, kh, h // kh, d).sum(3)

  return dq, fold_groups(dk), fold_groups(dv), ds


def reduce_to_shape(x, shape):
  """Sums a broadcast gradient back to `shape` (the bias's own shape)."""
  shape4 = (1,) * (x.ndim - len(shape)) + tuple(shape)
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape4)) if b == 1 and a != 1)
  return x.sum(axis=axes, keepdims=True).reshape(shape)
