"""Memory-efficient blockwise attention: FlashAttention-2 in plain jax.numpy / jax.lax.

Forward: for each block of queries, loop over key blocks keeping a running max `m`, running
denominator `l` and unnormalised output (the online softmax), so no [q_len, kv_len] matrix is
ever formed. Backward: a `jax.custom_vjp` whose residuals are the inputs, the output and the
log-sum-exp per query; it recomputes each score block once, accumulating dK, dV per key block
and dQ in a carried [q_len, d] buffer. Memory is linear in length for both passes.

Key blocks that the causal / local-window / length masks rule out entirely are skipped (the
loops run over the visible range only); blocks entirely inside the visible region are
computed without any masking.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.kernels import _checks
from attention_jax.kernels import masks as masks_lib
from attention_jax.kernels._lift import heads_last, vmap_heads
from attention_jax.kernels.dot_product import MASK_VALUE

_EMPTY_ROW_THRESHOLD = 0.5 * MASK_VALUE  # running max below this: no key seen yet


def _cdiv(a: int, b: int) -> int:
  return -(-a // b)


def _varying_axes(x) -> frozenset:
  """The mesh axes `x` varies over inside a `shard_map` that checks it (else none)."""
  manual = getattr(jax.typeof(x), "manual_axis_type", None)
  return manual.varying if manual is not None else frozenset()


def varying_like(x, ref):
  """`x` marked as varying over the mesh axes `ref` varies over (inside a `shard_map` that
  checks it), so loop carries built from constants match the values computed from `ref`."""
  axes = tuple(sorted(_varying_axes(ref)))
  return jax.tree.map(lambda leaf: lax.pcast(leaf, axes, to="varying"), x) if axes else x


def summed_like(x, ref):
  """`x` summed over the mesh axes it varies over and `ref` does not: the cotangent of `ref`,
  an input shared by those devices (a learned sink), from each device's share."""
  axes = tuple(sorted(_varying_axes(x) - _varying_axes(ref)))
  return lax.psum(x, axes) if axes else x


def sink_gradient(sink, lse, out, d_out):
  """The gradient of a learned sink logit from attention's output and residuals: the sink's
  weight in a row is exp(sink - lse) and d out / d sink = -weight · out, so it is
  -Σ_rows weight · (d_out · out).

  Args:
    sink: broadcastable against lse[..., 0]; lse: [..., q_len] (the sink included);
    out, d_out: [..., q_len, dv].

  Returns:
    float32 of shape lse.shape[:-1] (summed over the rows).
  """
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  weight = jnp.exp(jnp.asarray(sink, jnp.float32)[..., None] - lse)
  return -jnp.sum(weight * delta, axis=-1)


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static (hashable) description of one call: shapes, blocks and which masks apply."""
  q_len: int
  kv_len: int
  block_q: int
  block_k: int
  scale: float
  left: int | None  # window reach below the aligned diagonal (None = unbounded)
  right: int | None  # reach above it (0 when causal)
  has_dense_mask: bool
  has_segments: bool
  has_lengths: bool
  sink_tokens: int = 0  # the first `sink_tokens` keys escape the left reach (first-token sinks)
  soft_cap: float | None = None  # scores become soft_cap * tanh(scores / soft_cap)

  @property
  def num_sink_token_blocks(self) -> int:
    return _cdiv(self.sink_tokens, self.block_k)

  @property
  def num_q_blocks(self) -> int:
    return _cdiv(self.q_len, self.block_q)

  @property
  def num_kv_blocks(self) -> int:
    return _cdiv(self.kv_len, self.block_k)

  @property
  def offset(self) -> int:
    return self.kv_len - self.q_len

  @property
  def mask_every_block(self) -> bool:
    return self.has_dense_mask or self.has_segments or self.has_lengths

  @property
  def may_mask(self) -> bool:
    return (self.mask_every_block or self.left is not None or self.right is not None
            or self.kv_len % self.block_k != 0)


def _kv_block_range(plan: _Plan, i, kv_length):
  """Key blocks [lo, hi) that query block i can see at all."""
  qs = i * plan.block_q
  qe = jnp.minimum(qs + plan.block_q, plan.q_len)
  lo, hi = jnp.int32(0), jnp.int32(plan.num_kv_blocks)
  if plan.left is not None:
    lo = jnp.maximum(lo, (qs + plan.offset - plan.left) // plan.block_k)
  if plan.right is not None:
    hi = jnp.minimum(hi, (qe - 1 + plan.offset + plan.right) // plan.block_k + 1)
  if kv_length is not None:
    hi = jnp.minimum(hi, (kv_length + plan.block_k - 1) // plan.block_k)
  return lo, jnp.maximum(hi, lo)


def _q_block_range(plan: _Plan, j, kv_length):
  """Query blocks [lo, hi) that can see key block j at all."""
  ks = j * plan.block_k
  ke = jnp.minimum(ks + plan.block_k, plan.kv_len)
  lo, hi = jnp.int32(0), jnp.int32(plan.num_q_blocks)
  if plan.right is not None:
    lo = jnp.maximum(lo, (ks - plan.offset - plan.right) // plan.block_q)
  if plan.left is not None:
    hi = jnp.minimum(hi, (ke - 1 - plan.offset + plan.left) // plan.block_q + 1)
  if plan.sink_tokens:
    hi = jnp.where(ks < plan.sink_tokens, plan.num_q_blocks, hi)
  if kv_length is not None:
    hi = jnp.where(ks >= kv_length, lo, hi)
  return lo, jnp.maximum(hi, lo)


def _block_is_partial(plan: _Plan, i, j):
  """Whether block (i, j) has any masked entry (else it is computed without masking)."""
  qs, ks = i * plan.block_q, j * plan.block_k
  qe = jnp.minimum(qs + plan.block_q, plan.q_len)
  partial = ks + plan.block_k > plan.kv_len
  if plan.left is not None:  # a key left of the window for the block's last query (not a sink)
    first = jnp.maximum(ks, plan.sink_tokens)
    partial |= (first < ks + plan.block_k) & (first < qe - 1 + plan.offset - plan.left)
  if plan.right is not None:
    partial |= ks + plan.block_k - 1 > qs + plan.offset + plan.right
  return partial


def _block_allowed(plan: _Plan, i, j, mask, q_seg, kv_seg, kv_length):
  """Boolean [block_q, block_k] mask of block (i, j)."""
  bq, bk = plan.block_q, plan.block_k
  q_pos = i * bq + jnp.arange(bq)[:, None]
  kv_pos = j * bk + jnp.arange(bk)[None, :]
  allowed = masks_lib.position_allowed(q_pos, kv_pos, offset=plan.offset, left=plan.left,
                                       right=plan.right, sink_tokens=plan.sink_tokens)
  allowed &= kv_pos < (plan.kv_len if kv_length is None else kv_length)
  if q_seg is not None:
    allowed &= (lax.dynamic_slice_in_dim(q_seg, i * bq, bq)[:, None]
                == lax.dynamic_slice_in_dim(kv_seg, j * bk, bk)[None, :])
  if mask is not None:
    rows = lax.dynamic_slice_in_dim(mask, i * bq, bq, 0) if mask.shape[0] > 1 else mask
    allowed &= lax.dynamic_slice_in_dim(rows, j * bk, bk, 1) if mask.shape[1] > 1 else rows
  return allowed


def _scores(plan: _Plan, q_blk, k_blk, i, j, masking):
  """Scaled (and soft-capped) scores of block (i, j), masked where needed. q_blk is
  pre-scaled."""
  s = jnp.einsum("qd,kd->qk", q_blk, k_blk, preferred_element_type=jnp.float32)
  if plan.soft_cap is not None:
    s = plan.soft_cap * jnp.tanh(s / plan.soft_cap)
  if not plan.may_mask:
    return s
  apply_mask = lambda s: jnp.where(_block_allowed(plan, i, j, *masking), s, MASK_VALUE)
  if plan.mask_every_block:
    return apply_mask(s)
  return lax.cond(_block_is_partial(plan, i, j), apply_mask, lambda s: s, s)


def _pad_rows(x, rows: int, value=0):
  if x.shape[0] == rows:
    return x
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad, constant_values=value)


def _padded(plan: _Plan, q, k, v, mask, q_seg, kv_seg):
  tq_p = plan.num_q_blocks * plan.block_q
  tk_p = plan.num_kv_blocks * plan.block_k
  q = _pad_rows((q.astype(jnp.float32) * plan.scale).astype(q.dtype), tq_p)
  k, v = _pad_rows(k, tk_p), _pad_rows(v, tk_p)
  if mask is not None:
    mask = _pad_rows(mask, tq_p, False) if mask.shape[0] > 1 else mask
    mask = _pad_rows(mask.T, tk_p, False).T if mask.shape[1] > 1 else mask
  if q_seg is not None:
    q_seg, kv_seg = _pad_rows(q_seg, tq_p, -1), _pad_rows(kv_seg, tk_p, -2)
  return q, k, v, mask, q_seg, kv_seg


def _forward(plan: _Plan, q, k, v, mask, q_seg, kv_seg, kv_length, sink=None):
  """One head. Returns (out [q_len, dv], lse [q_len]); fully masked rows: 0 and +inf, or
  with a learned `sink` (a scalar logit, a key of value zero that starts the running
  softmax) 0 and the sink."""
  q, k, v, mask, q_seg, kv_seg = _padded(plan, q, k, v, mask, q_seg, kv_seg)
  masking = (mask, q_seg, kv_seg, kv_length)
  bq, bk, dv = plan.block_q, plan.block_k, v.shape[-1]

  def q_block(i):
    q_i = lax.dynamic_slice_in_dim(q, i * bq, bq)

    def kv_step(j, carry):
      m, l, acc = carry
      s = _scores(plan, q_i, lax.dynamic_slice_in_dim(k, j * bk, bk), i, j, masking)
      m_new = jnp.maximum(m, s.max(axis=-1))
      p = jnp.exp(s - m_new[:, None])
      alpha = jnp.exp(m - m_new)
      pv = jnp.einsum("qk,kd->qd", p.astype(v.dtype), lax.dynamic_slice_in_dim(v, j * bk, bk),
                      preferred_element_type=jnp.float32)
      return m_new, alpha * l + p.sum(axis=-1), alpha[:, None] * acc + pv

    if sink is None:
      m0, l0 = jnp.full((bq,), MASK_VALUE, jnp.float32), jnp.zeros((bq,), jnp.float32)
    else:  # the sink seen first: running max = sink, denominator exp(0)
      m0, l0 = jnp.full((bq,), sink, jnp.float32), jnp.ones((bq,), jnp.float32)
    init = (m0, l0, jnp.zeros((bq, dv), jnp.float32))
    init = varying_like(init, q_i)
    lo, hi = _kv_block_range(plan, i, kv_length)
    if plan.sink_tokens:  # the sink blocks left of the window, then the window
      init = lax.fori_loop(0, jnp.minimum(jnp.minimum(plan.num_sink_token_blocks, hi), lo), kv_step,
                           init)
    m, l, acc = lax.fori_loop(lo, hi, kv_step, init)
    seen = m > _EMPTY_ROW_THRESHOLD
    safe_l = jnp.where(seen, l, 1.0)
    out = jnp.where(seen[:, None], acc / safe_l[:, None], 0.0)
    lse = jnp.where(seen, m + jnp.log(safe_l), jnp.inf)
    return out, lse

  out, lse = lax.map(q_block, jnp.arange(plan.num_q_blocks))
  out = out.reshape(-1, dv)[:plan.q_len].astype(v.dtype)
  return out, lse.reshape(-1)[:plan.q_len]


def _backward(plan: _Plan, q, k, v, mask, q_seg, kv_seg, kv_length, out, lse, d_out):
  """One head. FlashAttention-2 backward; returns (dq, dk, dv)."""
  tq_p = plan.num_q_blocks * plan.block_q
  q_dtype, k_dtype, v_dtype = q.dtype, k.dtype, v.dtype
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  q, k, v, mask, q_seg, kv_seg = _padded(plan, q, k, v, mask, q_seg, kv_seg)
  d_out = _pad_rows(d_out.astype(v.dtype), tq_p)
  lse, delta = _pad_rows(lse, tq_p, jnp.inf), _pad_rows(delta, tq_p)
  masking = (mask, q_seg, kv_seg, kv_length)
  bq, bk = plan.block_q, plan.block_k

  def kv_block(dq, j):
    k_j = lax.dynamic_slice_in_dim(k, j * bk, bk)
    v_j = lax.dynamic_slice_in_dim(v, j * bk, bk)

    def q_step(i, carry):
      dq, dk_j, dv_j = carry
      q_i = lax.dynamic_slice_in_dim(q, i * bq, bq)
      g_i = lax.dynamic_slice_in_dim(d_out, i * bq, bq)
      s = _scores(plan, q_i, k_j, i, j, masking)
      p = jnp.exp(s - lax.dynamic_slice_in_dim(lse, i * bq, bq)[:, None])
      dv_j += jnp.einsum("qk,qd->kd", p.astype(g_i.dtype), g_i,
                         preferred_element_type=jnp.float32)
      dp = jnp.einsum("qd,kd->qk", g_i, v_j, preferred_element_type=jnp.float32)
      ds = p * (dp - lax.dynamic_slice_in_dim(delta, i * bq, bq)[:, None])
      if plan.soft_cap is not None:  # through the cap: 1 - tanh^2 (clipped: masked entries)
        ds *= 1.0 - jnp.square(jnp.clip(s / plan.soft_cap, -1.0, 1.0))
      dk_j += jnp.einsum("qk,qd->kd", ds.astype(q_i.dtype), q_i,
                         preferred_element_type=jnp.float32)
      dq_i = jnp.einsum("qk,kd->qd", ds.astype(k_j.dtype), k_j,
                        preferred_element_type=jnp.float32)
      dq = lax.dynamic_update_slice_in_dim(
          dq, lax.dynamic_slice_in_dim(dq, i * bq, bq) + dq_i, i * bq, 0)
      return dq, dk_j, dv_j

    init = (dq, *varying_like((jnp.zeros(k_j.shape, jnp.float32),
                               jnp.zeros(v_j.shape, jnp.float32)), k_j))
    lo, hi = _q_block_range(plan, j, kv_length)
    dq, dk_j, dv_j = lax.fori_loop(lo, hi, q_step, init)
    return dq, (dk_j, dv_j)

  dq0 = varying_like(jnp.zeros((tq_p, q.shape[-1]), jnp.float32), q)
  dq, (dk, dv) = lax.scan(kv_block, dq0, jnp.arange(plan.num_kv_blocks))
  dq = (dq[:plan.q_len] * plan.scale).astype(q_dtype)
  dk = dk.reshape(-1, k.shape[-1])[:plan.kv_len].astype(k_dtype)
  dv = dv.reshape(-1, v.shape[-1])[:plan.kv_len].astype(v_dtype)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_head(plan, q, k, v, mask, q_seg, kv_seg, kv_length, sink):
  return _forward(plan, q, k, v, mask, q_seg, kv_seg, kv_length, sink)[0]


def _flash_head_fwd(plan, q, k, v, mask, q_seg, kv_seg, kv_length, sink):
  out, lse = _forward(plan, q, k, v, mask, q_seg, kv_seg, kv_length, sink)
  return out, (q, k, v, mask, q_seg, kv_seg, kv_length, sink, out, lse)


def _flash_head_bwd(plan, residuals, d_out):
  q, k, v, mask, q_seg, kv_seg, kv_length, sink, out, lse = residuals
  dq, dk, dv = _backward(plan, q, k, v, mask, q_seg, kv_seg, kv_length, out, lse, d_out)
  d_sink = None
  if sink is not None:
    d_sink = sink_gradient(sink, lse, out, d_out).astype(sink.dtype)
  return dq, dk, dv, None, None, None, None, d_sink


_flash_head.defvjp(_flash_head_fwd, _flash_head_bwd)


def _block_size(requested: int, length: int, name: str) -> int:
  if requested < 1:
    raise ValueError(f"`{name}` must be >= 1, got {requested}.")
  return min(requested, length)


def flash_attention(query, key, value, *, mask=None, causal=False, kv_lengths=None,
                    segment_ids=None, local_window=None, sink_tokens=0, scale=None,
                    logits_soft_cap=None, sinks=None, block_q=256, block_k=512):
  """Blockwise (FlashAttention-2) attention with linear memory in forward and backward.

  Args:
    query: [batch, q_len, heads, head_dim] (float32 or bfloat16; accumulates in float32).
    key: [batch, kv_len, kv_heads, head_dim], heads % kv_heads == 0.
    value: [batch, kv_len, kv_heads, value_dim].
    mask: optional boolean mask broadcastable to [batch, heads, q_len, kv_len] (True = may
      attend). A dense mask costs O(q_len·kv_len) memory; prefer the structured arguments.
    causal: query i sees key j iff j <= i + (kv_len - q_len) (bottom-right aligned).
    kv_lengths: int [batch]; keys at positions >= kv_lengths[b] are padding.
    segment_ids: int [batch, length], or a pair (q_ids, kv_ids), for packed sequences.
    local_window: int w or (left, right) reach around the aligned diagonal.
    sink_tokens: with a local window, the first `sink_tokens` keys stay visible to every query
      that causality allows (first-token sinks; their blocks are visited besides the
      window's). Not the learned `sinks`.
    scale: score scale, default 1/sqrt(head_dim).
    logits_soft_cap: c caps the scaled scores, c·tanh(scores / c), inside the blockwise loop
      and its backward (Gemma 2); None: no cap.
    sinks: [heads] learned sink logits (GPT-OSS; a scalar is every head's): each starts its
      head's running softmax as a key of value zero, so it joins the denominator; its
      gradient comes from the output and log-sum-exp in the backward pass.
    block_q, block_k: block sizes (any lengths work; they need not divide them).

  Returns:
    [batch, q_len, heads, value_dim]; rows with no visible key give zeros.
  """
  b, tq, h, tk, _, d, _ = _checks.check_qkv(query, key, value)
  _checks.check_mask_dtype(mask)
  mask4 = _checks.as_rank4(mask, "mask", (b, h, tq, tk))
  kv_lengths = _checks.check_lengths(kv_lengths, "kv_lengths", b)
  q_seg, kv_seg = masks_lib.split_segment_ids(segment_ids, b, tq, tk)
  left, right = masks_lib.window_bounds(local_window, causal)
  if sink_tokens < 0:
    raise ValueError(f"`sink_tokens` must be >= 0, got {sink_tokens}.")
  sinks = _checks.check_sinks(sinks, h)
  plan = _Plan(q_len=tq, kv_len=tk, block_q=_block_size(block_q, tq, "block_q"),
               block_k=_block_size(block_k, tk, "block_k"),
               scale=_checks.default_scale(scale, d), left=left, right=right,
               has_dense_mask=mask is not None, has_segments=q_seg is not None,
               has_lengths=kv_lengths is not None,
               sink_tokens=int(sink_tokens) if left is not None else 0,
               soft_cap=_checks.check_soft_cap(logits_soft_cap))
  per_batch = lambda x: None if x is None else x[:, None]  # add the heads axis
  out = vmap_heads(functools.partial(_flash_head, plan), query, key, value, mask4,
                   per_batch(q_seg), per_batch(kv_seg), per_batch(kv_lengths),
                   _checks.sinks_per_head(sinks))
  return heads_last(out).astype(query.dtype)
