"""TPU splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`) behind our
kernel interface: block-sparse FlashAttention whose masks are known when it is compiled, so
blocks the causal / window structure rules out are never loaded.

Our conventions, mapped onto it:
- causal (bottom-right) and local windows: one `LocalMask`/`CausalMask` per head with
  `offset = kv_len - q_len` (splash's offset shifts the diagonal exactly as our alignment);
- padding (`kv_lengths`) and packed sequences (`segment_ids`): splash's `SegmentIds`, with
  keys past a row's length (and the block padding) given an id no query has;
- grouped-query attention: splash's own (query heads a multiple of key/value heads);
- rows with no visible key: zeros, as every kernel here (splash would average the values).
Sequences are padded to whole blocks; the batch axis is a vmap.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks, _pallas
from attention_jax.kernels import masks as masks_lib

# Splash's compute blocks must be whole vector registers: multiples of 128 lanes.
LANES = 128
DEFAULT_BLOCK = 512  # MaxText's default for v5e/v5p; override with block_q / block_kv


@functools.lru_cache(maxsize=64)
def _make_kernel(heads: int, q_len: int, kv_len: int, offset: int, left, right,
                 block_q: int, block_kv: int, soft_cap: float | None, interpret: bool):
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  shape = (q_len, kv_len)
  if left is None and right is None:
    head_mask = splash.FullMask(shape)
  elif left is None and right == 0:
    head_mask = splash.CausalMask(shape, offset=offset)
  else:
    head_mask = splash.LocalMask(shape, window_size=(left, right), offset=offset)
  blocks = splash.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
      block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
      block_kv_dq=block_kv)
  with jax.ensure_compile_time_eval():  # concrete mask tables, even when called under jit
    return splash.make_splash_mha(splash.MultiHeadMask([head_mask] * heads), head_shards=1,
                                  q_seq_shards=1, block_sizes=blocks,
                                  attn_logits_soft_cap=soft_cap, interpret=interpret)


def splash_attention(query, key, value, *, causal=False, kv_lengths=None, segment_ids=None,
                     local_window=None, scale=None, logits_soft_cap=None, sinks=None,
                     block_q=None, block_kv=None, interpret=False):
  """Splash attention on TPU; forward and backward are Pallas kernels.

  Args:
    query: [batch, q_len, heads, head_dim].
    key, value: [batch, kv_len, kv_heads, head_dim]; heads % kv_heads == 0.
    causal, kv_lengths, segment_ids, local_window, scale, logits_soft_cap: as
      `dot_product_attention` (the cap is splash's `attn_logits_soft_cap`).
    sinks: [heads] learned sink logits (a scalar is every head's), splash's own `sinks`
      (forward and gradient).
    block_q, block_kv: query / key block sizes (multiples of 128); default: 512, or the
      whole sequence rounded up to 128 when shorter. Used for the backward pass too.
    interpret: run in Pallas interpret mode (any platform, slow): for tests on CPU.

  Returns:
    [batch, q_len, heads, head_dim] in query's dtype; rows with no visible key are zeros.
  """
  _pallas.check_platform("splash", "tpu", interpret)
  b, tq, h, tk, _, d, _ = _checks.check_qkv(query, key, value)
  sinks = _checks.check_sinks(sinks, h)
  kv_lengths = _checks.check_lengths(kv_lengths, "kv_lengths", b)
  q_ids, kv_ids = masks_lib.split_segment_ids(segment_ids, b, tq, tk)
  left, right = masks_lib.window_bounds(local_window, causal)
  for name, block in (("block_q", block_q), ("block_kv", block_kv)):
    if block is not None and (block <= 0 or block % LANES):
      raise ValueError(f"splash `{name}` must be a positive multiple of {LANES}, got {block}.")
  bq = block_q or _pallas.block_size(tq, DEFAULT_BLOCK, LANES)
  bkv = block_kv or _pallas.block_size(tk, DEFAULT_BLOCK, LANES)
  tq_pad, tk_pad = _pallas.round_up(tq, bq), _pallas.round_up(tk, bkv)

  kernel = _make_kernel(h, tq_pad, tk_pad, tk - tq, left, right, bq, bkv,
                        _checks.check_soft_cap(logits_soft_cap), bool(interpret))
  scale = _checks.default_scale(scale, d)
  heads_first = lambda x, length: _pallas.pad_axis(x.transpose(0, 2, 1, 3), 2, length)
  q = heads_first(query * jnp.asarray(scale, query.dtype), tq_pad)
  k, v = heads_first(key, tk_pad), heads_first(value, tk_pad)

  if segment_ids is None and kv_lengths is None and (tk_pad == tk or causal):
    # Nothing for segment ids to hide (causal already hides keys past the end): without
    # them splash compares no ids in its blocks.
    out = jax.vmap(lambda q, k, v: kernel(q, k, v, sinks=sinks))(q, k, v)
  else:
    # Segment ids carry the padding: keys past a row's length or the sequence get
    # PAD_SEGMENT, which no query has.
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
    q_ids = jnp.zeros((b, tq), jnp.int32) if q_ids is None else q_ids
    kv_ids = jnp.zeros((b, tk), jnp.int32) if kv_ids is None else kv_ids
    kv_ids = _pallas.pad_axis(kv_ids, 1, tk_pad, _pallas.PAD_SEGMENT)
    if kv_lengths is not None:
      kv_ids = jnp.where(jnp.arange(tk_pad)[None] < kv_lengths[:, None], kv_ids,
                         _pallas.PAD_SEGMENT)
    q_ids = _pallas.pad_axis(q_ids, 1, tq_pad)
    out = jax.vmap(lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=SegmentIds(qi, ki),
                                                  sinks=sinks))(q, k, v, q_ids, kv_ids)
  out = out[:, :, :tq].transpose(0, 2, 1, 3).astype(query.dtype)
  has_key = masks_lib.rows_with_keys(b, tq, tk, causal=causal, kv_lengths=kv_lengths,
                                     segment_ids=segment_ids, local_window=local_window)
  if has_key is None:
    return out
  return jnp.where(has_key[:, :, None, None], out, jnp.zeros((), out.dtype))
