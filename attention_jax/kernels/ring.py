"""Ring attention (Liu et al. 2023): exact attention over a sequence split across devices.

Each device keeps its block of queries; the key/value blocks travel round the ring of the
`sequence` mesh axis (`lax.ppermute`), and the device folds each visiting block into its
output with the online softmax (our flash kernel's block loop computes each block's output
and log-sum-exp). The backward pass sends the key/value blocks round again, with their
gradient accumulators travelling beside them, so no device ever holds more than a few
blocks: memory per device is O(T / N) in both passes. N devices do N block steps each.

Causal attention is balanced by a striped token order (Brandon et al. 2023): device d holds
tokens d, d + N, d + 2N, ..., so every device sees the same number of visible keys at every
step (with contiguous blocks, device 0 would idle through N - 1 of its N steps). Called on
global arrays under a mesh, the kernel stripes and unstripes itself (an all-to-all each
way); called inside a `shard_map`, it takes the layout it is told (`striped`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from attention_jax.kernels import _checks
from attention_jax.kernels import flash
from attention_jax.kernels import masks as masks_lib
from attention_jax.kernels._lift import heads_last, vmap_heads

# Which keys of a visiting block a device's queries see: all, up to the diagonal, strictly
# below it, or none (causal, contiguous layout, a later block).
FULL, DIAGONAL, STRICT, NONE = range(4)


@dataclasses.dataclass(frozen=True)
class _Ring:
  """Static description of one call (hashable: the custom_vjp's nondiff argument)."""
  axis_name: str
  causal: bool
  striped: bool
  scale: float
  block_q: int
  block_k: int
  has_segments: bool
  soft_cap: float | None = None

  def plan(self, length: int, visible: int) -> flash._Plan:
    right = {FULL: None, DIAGONAL: 0, STRICT: -1}[visible]
    return flash._Plan(q_len=length, kv_len=length, block_q=min(self.block_q, length),
                       block_k=min(self.block_k, length), scale=self.scale, left=None,
                       right=right, has_dense_mask=False, has_segments=self.has_segments,
                       has_lengths=False, soft_cap=self.soft_cap)


def _visibility(ring: _Ring, source, me):
  """Index into (FULL, DIAGONAL, STRICT, NONE) for the block from device `source`."""
  if not ring.causal:
    return jnp.int32(FULL)
  if ring.striped:  # key d' + N j is visible to query d + N i iff j < i, or j == i and d' <= d
    return jnp.where(source <= me, DIAGONAL, STRICT)
  return jnp.where(source < me, FULL, jnp.where(source == me, DIAGONAL, NONE))


def _per_head(segment):
  return None if segment is None else segment[:, None]


def _block_forward(ring: _Ring, visible, q, k, v, q_seg, kv_seg):
  """(out [b, h, t, dv] float32, lse [b, h, t]; -inf where a row sees no key)."""
  b, t, h, _ = q.shape

  def branch(kind):
    def run(q, k, v, q_seg, kv_seg):
      if kind == NONE:
        return flash.varying_like((jnp.zeros((b, h, t, v.shape[-1]), jnp.float32),
                                   jnp.full((b, h, t), -jnp.inf, jnp.float32)), q)
      out, lse = vmap_heads(functools.partial(flash._forward, ring.plan(t, kind)), q, k, v,
                            None, _per_head(q_seg), _per_head(kv_seg), None)
      return out.astype(jnp.float32), jnp.where(jnp.isinf(lse), -jnp.inf, lse)
    return run
  return lax.switch(visible, [branch(kind) for kind in range(4)], q, k, v, q_seg, kv_seg)


def _block_backward(ring: _Ring, visible, q, k, v, q_seg, kv_seg, out, lse, d_out):
  """(dq, dk, dv) of one visiting block, float32; dk, dv summed over each GQA group."""
  b, t, h, _ = q.shape
  kh = k.shape[2]

  def branch(kind):
    def run(q, k, v, q_seg, kv_seg, out, lse, d_out):
      if kind == NONE:
        return flash.varying_like((jnp.zeros(q.shape, jnp.float32),
                                   jnp.zeros(k.shape, jnp.float32),
                                   jnp.zeros(v.shape, jnp.float32)), q)
      dq, dk, dv = vmap_heads(functools.partial(flash._backward, ring.plan(t, kind)), q, k, v,
                              None, _per_head(q_seg), _per_head(kv_seg), None,
                              out.transpose(0, 2, 1, 3), lse, d_out.transpose(0, 2, 1, 3))
      group = lambda x: x.reshape(b, kh, h // kh, t, -1).sum(2).astype(jnp.float32)
      return (heads_last(dq).astype(jnp.float32), heads_last(group(dk)),
              heads_last(group(dv)))
    return run
  return lax.switch(visible, [branch(kind) for kind in range(4)], q, k, v, q_seg, kv_seg,
                    out, lse, d_out)


def _shift(ring: _Ring, tree):
  """Sends every block to the next device of the ring."""
  n = lax.axis_size(ring.axis_name)
  return lax.ppermute(tree, ring.axis_name, [(i, (i + 1) % n) for i in range(n)])


def _merge(out, lse, block_out, block_lse):
  """Online-softmax merge of two partial results (lse -inf: nothing seen yet)."""
  top = jnp.maximum(lse, block_lse)
  safe = jnp.where(jnp.isfinite(top), top, 0.0)
  w, w_block = jnp.exp(lse - safe), jnp.exp(block_lse - safe)
  total = w + w_block
  new_lse = jnp.where(total > 0, safe + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
  norm = jnp.where(total > 0, total, 1.0)[..., None]
  return (out * w[..., None] + block_out * w_block[..., None]) / norm, new_lse


def _forward(ring: _Ring, q, k, v, q_seg, kv_seg, sinks):
  """Local blocks -> (out [b, t, h, dv] in v's dtype, lse [b, h, t] with +inf for rows that
  see no key, as the flash backward expects). Learned `sinks` [h] start every row's online
  softmax as a key of value zero."""
  n, me = lax.axis_size(ring.axis_name), lax.axis_index(ring.axis_name)
  b, t, h, _ = q.shape
  lse = jnp.full((b, h, t), -jnp.inf, jnp.float32)
  if sinks is not None:
    lse = jnp.broadcast_to(sinks.astype(jnp.float32)[None, :, None], (b, h, t))
  out, lse = flash.varying_like((jnp.zeros((b, h, t, v.shape[-1]), jnp.float32), lse), q)

  def fold(s, k, v, kv_seg, out, lse):
    visible = _visibility(ring, (me - s) % n, me)
    return _merge(out, lse, *_block_forward(ring, visible, q, k, v, q_seg, kv_seg))

  def step(s, carry):
    k, v, kv_seg, out, lse = carry
    out, lse = fold(s, k, v, kv_seg, out, lse)
    k, v, kv_seg = _shift(ring, (k, v, kv_seg))
    return k, v, kv_seg, out, lse

  k_last, v_last, seg_last, out, lse = lax.fori_loop(0, n - 1, step, (k, v, kv_seg, out, lse))
  out, lse = fold(n - 1, k_last, v_last, seg_last, out, lse)
  return heads_last(out).astype(v.dtype), jnp.where(jnp.isinf(lse), jnp.inf, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring_local(ring: _Ring, q, k, v, q_seg, kv_seg, sinks):
  return _forward(ring, q, k, v, q_seg, kv_seg, sinks)[0]


def _ring_local_fwd(ring, q, k, v, q_seg, kv_seg, sinks):
  out, lse = _forward(ring, q, k, v, q_seg, kv_seg, sinks)
  return out, (q, k, v, q_seg, kv_seg, sinks, out, lse)


def _ring_local_bwd(ring, residuals, d_out):
  q, k, v, q_seg, kv_seg, sinks, out, lse = residuals
  n, me = lax.axis_size(ring.axis_name), lax.axis_index(ring.axis_name)

  def fold(s, k, v, kv_seg, dq, dk, dv):
    visible = _visibility(ring, (me - s) % n, me)
    dq_s, dk_s, dv_s = _block_backward(ring, visible, q, k, v, q_seg, kv_seg, out, lse, d_out)
    return dq + dq_s, dk + dk_s, dv + dv_s

  def step(s, carry):  # dk, dv travel with their block and arrive home after n shifts
    k, v, kv_seg, dq, dk, dv = carry
    dq, dk, dv = fold(s, k, v, kv_seg, dq, dk, dv)
    k, v, kv_seg, dk, dv = _shift(ring, (k, v, kv_seg, dk, dv))
    return k, v, kv_seg, dq, dk, dv

  zeros = lambda x: flash.varying_like(jnp.zeros(x.shape, jnp.float32), q)
  k_n, v_n, seg_n, dq, dk, dv = lax.fori_loop(
      0, n - 1, step, (k, v, kv_seg, zeros(q), zeros(k), zeros(v)))
  dq, dk, dv = fold(n - 1, k_n, v_n, seg_n, dq, dk, dv)
  dk, dv = _shift(ring, (dk, dv))
  d_sinks = None
  if sinks is not None:  # this device's rows' share, summed over the devices sharing sinks
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    d_sinks = flash.sink_gradient(sinks, lse, heads_first(out), heads_first(d_out))
    d_sinks = flash.summed_like(d_sinks.sum(0), sinks).astype(sinks.dtype)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, d_sinks


_ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def _axis_bound(axis_name: str) -> bool:
  try:
    lax.axis_size(axis_name)
  except NameError:
    return False
  return True


def _stripe(x, n: int):
  """[b, t, ...] -> the striped order: device d's block holds tokens d, d + n, d + 2n, ..."""
  b, t = x.shape[:2]
  return x.reshape(b, t // n, n, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


def _unstripe(x, n: int):
  b, t = x.shape[:2]
  return x.reshape(b, n, t // n, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


def _mesh_axes(mesh, names, *sizes) -> tuple[str, ...] | None:
  """The mesh axes among `names` (size > 1) whose product divides every one of `sizes`."""
  axes = tuple(a for a in names if a in mesh.axis_names and mesh.shape[a] > 1)
  total = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  return axes if axes and all(size % total == 0 for size in sizes) else None


def ring_attention(query, key, value, *, causal=False, segment_ids=None, scale=None,
                   logits_soft_cap=None, sinks=None, axis_name="sequence", striped=False,
                   batch_axes=("data", "fsdp", "expert"), head_axes=("tensor",), block_q=512,
                   block_k=512):
  """Exact attention with the sequence split over the mesh axis `axis_name`.

  Two ways to call it:
  - On global arrays inside `jax.set_mesh(mesh)` (as the trainer does with
    config.mesh.sequence > 1): it pads the length to a multiple of the axis size, stripes
    causal inputs, and runs the ring in a `shard_map` (batch over `batch_axes`, heads over
    `head_axes`, where those divide).
  - Without a mesh axis `axis_name` of size > 1, it is `flash_attention` on one device.
  - Inside your own `shard_map` over `axis_name`: the arguments are this device's blocks,
    in contiguous order (device i holds block i), or striped (`striped=True`: device i holds
    tokens i, i + N, ...; balanced for causal attention). Every block has the same length.

  Args:
    query: [batch, q_len, heads, head_dim]; key, value: [batch, kv_len, kv_heads, d|dv] with
      kv_len == q_len (self-attention) and heads % kv_heads == 0 (GQA).
    causal: query i sees key j iff j <= i (global positions).
    segment_ids: int [batch, length] of packed sequences (attention stays inside a segment).
    scale: score scale, default 1/sqrt(head_dim).
    logits_soft_cap: caps the scaled scores, c·tanh(scores / c), in every block (Gemma 2).
    sinks: [heads] learned sink logits (GPT-OSS; a scalar is every head's), in every row's
      denominator; inside your own `shard_map` they are this device's heads' sinks.
    block_q, block_k: the flash kernel's block sizes within a device's block.

  Returns:
    [batch, q_len, heads, dv]; rows with no visible key give zeros.
  """
  b, tq, h, tk, _, d, _ = _checks.check_qkv(query, key, value)
  if tq != tk:
    raise ValueError(f"ring attention is self-attention: q_len ({tq}) must equal kv_len "
                     f"({tk}).")
  q_seg, kv_seg = masks_lib.split_segment_ids(segment_ids, b, tq, tk)
  scale = _checks.default_scale(scale, d)
  cap = _checks.check_soft_cap(logits_soft_cap)
  sinks = _checks.check_sinks(sinks, h)
  if _axis_bound(axis_name):
    ring = _Ring(axis_name, causal, striped, scale, block_q, block_k, q_seg is not None, cap)
    return _ring_local(ring, query, key, value, q_seg, kv_seg, sinks)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.shape.get(axis_name, 1) == 1:  # no ring: one device holds the whole sequence
    return flash.flash_attention(query, key, value, causal=causal, segment_ids=segment_ids,
                                 scale=scale, logits_soft_cap=cap, sinks=sinks,
                                 block_q=block_q, block_k=block_k)
  n = mesh.shape[axis_name]
  padded = -(-tq // n) * n
  if padded != tq or q_seg is not None:  # padding is masked out with segment ids
    real = jnp.zeros((b, tq), jnp.int32) if q_seg is None else q_seg
    pad = lambda x, value: jnp.pad(x, [(0, 0), (0, padded - tq)], constant_values=value)
    q_seg, kv_seg = pad(real, -1), pad(real, -2)
  else:
    kv_seg = None
  pad_tokens = lambda x: jnp.pad(x, [(0, 0), (0, padded - tq), (0, 0), (0, 0)])
  q, k, v = pad_tokens(query), pad_tokens(key), pad_tokens(value)
  reorder = (lambda x: _stripe(x, n)) if causal else (lambda x: x)
  q, k, v = reorder(q), reorder(k), reorder(v)
  if q_seg is not None:
    q_seg, kv_seg = reorder(q_seg), reorder(kv_seg)

  batch = _mesh_axes(mesh, batch_axes, b)
  heads = _mesh_axes(mesh, head_axes, h, key.shape[2])
  tokens, segments = P(batch, axis_name, heads, None), P(batch, axis_name)
  ring = _Ring(axis_name, causal, causal, scale, block_q, block_k, q_seg is not None, cap)
  local = lambda q, k, v, qs, ks, sinks: _ring_local(ring, q, k, v, qs, ks, sinks)
  optional = lambda x, spec: None if x is None else spec  # no spec for an absent input
  out = jax.shard_map(local, in_specs=(tokens,) * 3 + (optional(q_seg, segments),) * 2
                      + (optional(sinks, P(heads)),),
                      out_specs=tokens)(q, k, v, q_seg, kv_seg, sinks)
  out = _unstripe(out, n) if causal else out
  return out[:, :tq]
