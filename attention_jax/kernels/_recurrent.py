"""The machinery shared by the linear-cost kernels (linear, retention, performer).

They all compute, per head, out_t = f(Σ_s w_ts (q_t·k_s) v_s, Σ_s w_ts (q_t·k_s)) for feature
vectors q, k (already feature-mapped) and weights w_ts = Π_{r=s+1..t} α_r (a decay, 1 for
plain linear attention) over the keys s the query may see. Because the weight factorises, the
sum over keys can be carried as a state S = Σ_s w φ(k_s) v_sᵀ [f, dv] and z = Σ_s w φ(k_s) [f]:

  * causal, training: the chunkwise-parallel form. Inside a chunk of C tokens the quadratic
    form (a C x C matrix), between chunks the carried state: O(T·C·f + T·f·dv), not O(T²).
  * causal, decoding: the recurrent form, C = the tokens of the call, state in and out: O(1)
    memory per layer instead of a KV cache.
  * not causal: a forward and a backward causal pass minus the diagonal (so decay is two-sided,
    γ^|t-s|, and packed segments work the same way).

Packed segments (contiguous runs of equal ids) reset the state at each boundary; padding keys
(kv_lengths) have weight zero and no decay, so a returned state is the state after the last
real key. Gradients come from JAX autodiff through the scan (the residuals are the per-chunk
states: O(T/C · f · dv) per head).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attention_jax.kernels import _checks
from attention_jax.kernels import masks as masks_lib
from attention_jax.kernels._lift import heads_last, vmap_heads


class RecurrentState(NamedTuple):
  """What a linear-cost kernel carries from one call to the next, per (batch, query head).

  kv: [batch, heads, features, value_dim], Σ w φ(k) vᵀ.
  k_sum: [batch, heads, features], Σ w φ(k).
  count: [batch, heads], Σ w over real keys (retention's normaliser).
  segment: int [batch, heads], the packed segment the state belongs to.
  shift: [batch, heads], the log-scale the key features were divided by (performer's
    stabiliser; 0 for the others).
  """
  kv: jax.Array
  k_sum: jax.Array
  count: jax.Array
  segment: jax.Array
  shift: jax.Array


def empty_state(batch: int, heads: int, features: int, value_dim: int) -> RecurrentState:
  """The state before the first token (all zeros, segment 0)."""
  return RecurrentState(
      kv=jnp.zeros((batch, heads, features, value_dim), jnp.float32),
      k_sum=jnp.zeros((batch, heads, features), jnp.float32),
      count=jnp.zeros((batch, heads), jnp.float32),
      segment=jnp.zeros((batch, heads), jnp.int32),
      shift=jnp.zeros((batch, heads), jnp.float32))


def check_state(state, return_state: bool, causal: bool, batch: int, heads: int,
                features: int, value_dim: int):
  """Clear errors for a state that cannot be continued (or returned) here."""
  if (state is not None or return_state) and not causal:
    raise ValueError("a recurrent `state` belongs to a causal sequence: pass causal=True with "
                     "`state` or `return_state`.")
  if state is None:
    return
  if not isinstance(state, RecurrentState):
    raise ValueError(f"`state` must be a RecurrentState (from a call with return_state=True), "
                     f"got {type(state).__name__}.")
  want = (batch, heads, features, value_dim)
  if tuple(np.shape(state.kv)) != want:
    raise ValueError(f"`state.kv` must have shape [batch, heads, features, value_dim] = {want}, "
                     f"got {tuple(np.shape(state.kv))}: a state from another batch or model.")


def _chunk_scan(q, k, v, w, seg, log_decay, state, chunk: int):
  """One head, causal. q, k [T, f]; v [T, dv]; w [T] (1 = real key); seg int [T]; log_decay
  [T] or None; state = (kv, k_sum, count, segment). T is a multiple of `chunk`.

  Returns (num [T, dv], den [T], count [T], final state).
  """
  t = q.shape[0]
  n = t // chunk
  split = lambda x: None if x is None else x.reshape((n, chunk) + x.shape[1:])
  tril = jnp.tril(jnp.ones((chunk, chunk), bool))
  dot = lambda a, b, spec: jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)

  def step(carry, xs):
    kv, k_sum, count, sid = carry
    q_c, k_c, v_c, w_c, seg_c, ld_c = xs
    visible = tril & (seg_c[:, None] == seg_c[None, :])
    if ld_c is None:
      weights = visible.astype(jnp.float32)
      to_query = jnp.ones((chunk,), jnp.float32)  # decay from the state to each query
      to_end = jnp.ones((chunk,), jnp.float32)  # decay from each key to the chunk's end
      through = jnp.float32(1.0)  # decay across the whole chunk
    else:
      b = jnp.cumsum(ld_c)
      weights = jnp.where(visible, jnp.exp(jnp.where(visible, b[:, None] - b[None, :], 0.0)),
                          0.0)
      to_query, to_end, through = jnp.exp(b), jnp.exp(b[-1] - b), jnp.exp(b[-1])
    scores = dot(q_c, k_c, "qf,kf->qk") * weights
    sees_state = jnp.where(seg_c == sid, to_query, 0.0)
    num = dot(scores, v_c, "qk,kd->qd") + sees_state[:, None] * dot(q_c, kv, "qf,fd->qd")
    den = scores.sum(-1) + sees_state * (q_c @ k_sum)
    cnt = weights @ w_c + sees_state * count
    last = seg_c[-1]
    keep = jnp.where(seg_c == last, to_end, 0.0)  # keys that belong to the state after
    old = jnp.where(last == sid, through, 0.0)
    kv = old * kv + dot(k_c * keep[:, None], v_c, "kf,kd->fd")
    k_sum = old * k_sum + keep @ k_c
    count = old * count + keep @ w_c
    return (kv, k_sum, count, last), (num, den, cnt)

  xs = (split(q), split(k), split(v), split(w), split(seg), split(log_decay))
  state, (num, den, cnt) = lax.scan(step, state, xs)
  return num.reshape(t, -1), den.reshape(t), cnt.reshape(t), state


def _global_sums(q_features, k_features, value, real):
  """Non-causal, no decay, no segments: every query sees the same sums S and z."""
  b, tq, h, _ = q_features.shape
  kh = k_features.shape[2]
  q = q_features.reshape(b, tq, kh, h // kh, -1)
  kv = jnp.einsum("bskf,bskd->bkfd", k_features, value)
  num = jnp.einsum("bqkgf,bkfd->bqkgd", q, kv).reshape(b, tq, h, -1)
  den = jnp.einsum("bqkgf,bkf->bqkg", q, k_features.sum(1)).reshape(b, tq, h)
  count = jnp.broadcast_to(real.sum(1)[:, None, None], (b, tq, h))
  return num, den, count, None


def _pad_front_back(x, front: int, back: int, edge: bool = False):
  """Pads axis 1 of `x` [batch, T, ...] with zeros (or its edge values)."""
  if x is None or (front == 0 and back == 0):
    return x
  pad = [(0, 0), (front, back)] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x, pad, mode="edge" if edge else "constant")


def recurrent_attention(q_features, k_features, value, *, causal: bool, kv_lengths=None,
                        segment_ids=None, log_decay=None, state=None, chunk_size: int = 64):
  """The shared core: feature-mapped queries and keys in, (num, den, count, state) out.

  Args:
    q_features: [batch, q_len, heads, f]; k_features: [batch, kv_len, kv_heads, f] (zero or
      not at padding: they are weighted out); value: [batch, kv_len, kv_heads, dv].
    causal: bottom-right aligned, as the softmax kernels.
    kv_lengths: int [batch] or None. segment_ids: int [batch, length] (q_len == kv_len).
    log_decay: None or float [batch|1, kv_len|1, heads] of log α_t <= 0 at each key.
    state: None or a RecurrentState to continue from (causal only).
    chunk_size: C of the chunkwise form.

  Returns:
    num [batch, q_len, heads, dv], den and count [batch, q_len, heads] (float32), and the
    state after the last key (None when not causal).
  """
  b, tq, h, _ = q_features.shape
  tk = k_features.shape[1]
  dv = value.shape[-1]
  if chunk_size < 1:
    raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
  if isinstance(segment_ids, (tuple, list)):
    raise ValueError("the linear-cost kernels take packed segment ids for self-attention only "
                     "(one [batch, length] array), not a (q_ids, kv_ids) pair.")
  if segment_ids is not None and tq != tk:
    raise ValueError(f"one `segment_ids` array needs q_len == kv_len (got {tq} and {tk}).")
  kv_lengths = _checks.check_lengths(kv_lengths, "kv_lengths", b)
  f32 = lambda x: None if x is None else jnp.asarray(x, jnp.float32)
  real = jnp.ones((b, tk), jnp.float32)
  if kv_lengths is not None:
    real = (jnp.arange(tk)[None] < kv_lengths[:, None]).astype(jnp.float32)
  if not causal and log_decay is None and segment_ids is None:  # one sum over all keys
    return _global_sums(f32(q_features), f32(k_features) * real[..., None, None], f32(value),
                        real)
  seg = (jnp.zeros((b, tk), jnp.int32) if segment_ids is None
         else masks_lib.split_segment_ids(segment_ids, b, tq, tk)[1])
  if state is not None and segment_ids is None:
    seg = jnp.broadcast_to(state.segment[:, :1], (b, tk))  # continue the state's segment
  if log_decay is not None:
    log_decay = jnp.broadcast_to(f32(log_decay), (b, tk, h)) * real[..., None]  # pads: no decay
  k_features = f32(k_features) * real[..., None, None]
  q_features, value = f32(q_features), f32(value)

  # Align: after padding, query t sits at key t (bottom-right when causal), T % C == 0.
  q_front = max(tk - tq, 0) if causal else 0
  k_front = max(tq - tk, 0) if causal else 0
  length = max(tq + q_front, tk + k_front)
  chunk = min(chunk_size, length)
  back = -length % chunk
  q_back = length + back - tq - q_front
  k_back = length + back - tk - k_front
  q_p = _pad_front_back(q_features, q_front, q_back)
  k_p, v_p, real_p = (_pad_front_back(x, k_front, k_back) for x in (k_features, value, real))
  seg_p = _pad_front_back(seg, k_front, k_back, edge=True)
  ld_p = _pad_front_back(log_decay, k_front, k_back)
  if state is None:
    state = empty_state(b, h, q_features.shape[-1], dv)
    state = state._replace(segment=jnp.broadcast_to(seg_p[:, :1], (b, h)))

  heads_axis = lambda x: None if x is None else x[:, None]  # [batch, 1, ...]
  per_head = lambda x: None if x is None else jnp.moveaxis(x, -1, 1)  # [b, T, h] -> [b, h, T]

  def forward(q, k, v, w, s, ld, kv, k_sum, count, sid):
    return _chunk_scan(q, k, v, w, s, ld, (kv, k_sum, count, sid), chunk)

  def run(q, k, v, w, s, ld, st):
    return vmap_heads(forward, q, k, v, heads_axis(w), heads_axis(s), per_head(ld),
                      st.kv, st.k_sum, st.count, st.segment)

  num, den, cnt, (kv, k_sum, count, sid) = run(q_p, k_p, v_p, real_p, seg_p, ld_p, state)
  final = None
  if causal:
    final = RecurrentState(kv, k_sum, count, sid, state.shift)
  else:  # add the backward pass and remove the diagonal counted twice
    flip = lambda x: None if x is None else jnp.flip(x, axis=1)
    rnum, rden, rcnt, _ = run(flip(q_p), flip(k_p), flip(v_p), flip(real_p), flip(seg_p),
                              flip(ld_p), state)
    group = h // k_p.shape[2]
    k_rep, v_rep = (jnp.repeat(x, group, axis=2) for x in (k_p, v_p))
    diag = jnp.einsum("bthf,bthf->bht", q_p, k_rep)  # [b, h, T]
    num = num + jnp.flip(rnum, axis=2) - diag[..., None] * jnp.moveaxis(v_rep, 2, 1)
    den = den + jnp.flip(rden, axis=2) - diag
    cnt = cnt + jnp.flip(rcnt, axis=2) - real_p[:, None]
  rows = slice(q_front, q_front + tq)
  return (heads_last(num)[:, rows], jnp.moveaxis(den, 1, 2)[:, rows],
          jnp.moveaxis(cnt, 1, 2)[:, rows], final)
