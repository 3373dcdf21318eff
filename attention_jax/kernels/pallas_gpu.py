"""The Pallas GPU FlashAttention op (`jax.experimental.pallas.ops.gpu.attention.mha`, Triton)
behind our kernel interface.

Chosen over `tokamax.dot_product_attention` because it ships with jax itself (no extra
dependency whose version must track jaxlib's), and it runs forward and backward in Pallas
interpret mode on a CPU, so the mapping below is tested here on every change.

What the op expresses, and how our conventions map onto it:
- causal is aligned top-left and needs one sequence: with q_len < kv_len the queries are
  front-padded to kv_len (then top-left is our bottom-right; the cost grows by
  kv_len / q_len, so `auto` leaves such calls to XLA); with q_len > kv_len the first
  q_len - kv_len rows see no key and are zeros;
- `segment_ids`: one array shared by queries and keys, so packed self-attention only;
- sequences are padded to whole blocks, the padding marked with a segment id no token has;
- grouped-query attention: a vmap over the query heads of each group, K/V not repeated.
No kv_lengths, windows, dense masks or biases: those go to `xla`/`cudnn` (`auto` does so).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks, _pallas
from attention_jax.kernels import masks as masks_lib

DEFAULT_BLOCK = 128  # forward blocks, the op's default
MIN_TILE = 16  # Triton's smallest dot tile; blocks are powers of two from here
BACKWARD_BLOCK = 32  # the op's default backward blocks


def _power_of_two_at_least(n: int, floor: int = MIN_TILE) -> int:
  return max(floor, 1 << (max(n, 1) - 1).bit_length())


def pallas_gpu_attention(query, key, value, *, causal=False, segment_ids=None, scale=None,
                         block_q=None, block_k=None, interpret=False):
  """FlashAttention-2 in Pallas/Triton for NVIDIA GPUs; forward and backward.

  Args:
    query: [batch, q_len, heads, head_dim].
    key, value: [batch, kv_len, kv_heads, head_dim] (same head_dim); heads % kv_heads == 0.
    causal: bottom-right aligned, as `dot_product_attention`.
    segment_ids: int [batch, length] for packed self-attention (q_len == kv_len).
    scale: score scale; default 1/sqrt(head_dim).
    block_q, block_k: forward block sizes (powers of two, at least 16: Triton's blocks);
      default 128, or the sequence rounded up to a power of two when shorter. The backward
      uses blocks of min(32, block_q).
    interpret: run in Pallas interpret mode (any platform, slow): for tests on CPU.

  Returns:
    [batch, q_len, heads, head_dim] in query's dtype.
  """
  _pallas.check_platform("pallas_gpu", "gpu", interpret)
  b, tq, h, tk, kh, d, dv = _checks.check_qkv(query, key, value)
  if dv != d:
    raise ValueError(f"kernel 'pallas_gpu' needs value head_dim == query head_dim, got {dv} "
                     f"and {d}; use 'xla' or 'flash'.")
  if isinstance(segment_ids, (tuple, list)):
    raise ValueError("kernel 'pallas_gpu' takes one `segment_ids` array [batch, length] "
                     "shared by queries and keys (packed self-attention), not a pair; use "
                     "'flash' or 'xla' for cross-attention segments.")
  ids, _ = masks_lib.split_segment_ids(segment_ids, b, tq, tk)
  if tq > tk and not causal:
    raise ValueError(f"kernel 'pallas_gpu' needs q_len <= kv_len without `causal` (got "
                     f"{tq} and {tk}): its one segment-id array cannot mask the padded keys "
                     "of the extra queries. Use 'flash' or 'xla'.")
  for name, block in (("block_q", block_q), ("block_k", block_k)):
    if block is not None and (block < MIN_TILE or block & (block - 1)):
      raise ValueError(f"pallas_gpu `{name}` must be a power of two >= {MIN_TILE}, got "
                       f"{block}.")
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention

  # One sequence length for queries and keys: front-pad causal queries (bottom-right ->
  # top-left), drop the causal rows that see nothing, end-pad both to whole blocks.
  front = tk - tq if causal and tq < tk else 0
  empty = tq - tk if causal and tq > tk else 0
  q = query[:, empty:]
  if front:
    q = jnp.pad(q, ((0, 0), (front, 0), (0, 0), (0, 0)))
  length = max(q.shape[1], tk)
  block = block_q or min(DEFAULT_BLOCK, _power_of_two_at_least(length))
  block_k = block_k or block
  padded = _pallas.round_up(length, max(block, block_k))  # powers of two: max is the lcm
  # Triton's dots need head_dim >= 16: zero columns change no score and add no output.
  dim = _power_of_two_at_least(d)
  pad = lambda x: _pallas.pad_axis(_pallas.pad_axis(x, 1, padded), 3, dim)
  q, k, v = pad(q), pad(key), pad(value)
  if ids is None and padded == tk:
    ids = None
  else:
    ids = jnp.zeros((b, tk), jnp.int32) if ids is None else ids
    ids = _pallas.pad_axis(ids, 1, padded, _pallas.PAD_SEGMENT)
  backward = min(BACKWARD_BLOCK, block, block_k)
  blocks = pallas_attention.BlockSizes(
      block_q=block, block_k=block_k, block_q_dkv=backward, block_kv_dkv=backward,
      block_q_dq=backward, block_kv_dq=backward)

  def mha(q, k, v):
    return pallas_attention.mha(q, k, v, ids, sm_scale=_checks.default_scale(scale, d),
                                causal=causal, block_sizes=blocks, interpret=bool(interpret))

  g = h // kh
  if g == 1:
    out = mha(q, k, v)
  else:  # map the query heads of each group over the same K/V
    grouped = q.reshape(q.shape[:2] + (kh, g, dim))
    out = jax.vmap(mha, in_axes=(3, None, None), out_axes=3)(grouped, k, v)
    out = out.reshape(out.shape[:2] + (h, dim))
  out = out[:, front:front + tq - empty, :, :d].astype(query.dtype)
  if empty:
    out = jnp.pad(out, ((0, 0), (empty, 0), (0, 0), (0, 0)))
  return out
