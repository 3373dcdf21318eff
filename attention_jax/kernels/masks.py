"""Boolean attention masks (True = may attend), broadcastable to [batch, heads, q_len, kv_len].

Causal masks are aligned bottom-right: query i may attend key j iff j <= i + (kv_len - q_len),
so the last query sees every key. That is what a KV cache (one new query against all cached
keys) and Transformer-XL segment memory (keys = [memory; segment]) need; for q_len == kv_len it
is the usual lower-triangular mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Window = int | tuple[int, int] | None


def window_bounds(local_window: Window, causal: bool) -> tuple[int | None, int | None]:
  """(left, right) reach of a query around its aligned diagonal; None means unbounded.

  `local_window=w` means (w, w), as in `jax.nn.dot_product_attention`; causal caps right at 0.
  """
  if local_window is None:
    left, right = None, None
  elif isinstance(local_window, int):
    left, right = local_window, local_window
  else:
    try:
      left, right = (int(w) for w in local_window)
    except (TypeError, ValueError):
      raise ValueError(f"`local_window` must be an int or a (left, right) pair, got "
                       f"{local_window!r}.") from None
  for w in (left, right):
    if w is not None and w < 0:
      raise ValueError(f"`local_window` sizes must be >= 0, got {local_window!r}.")
  if causal:
    right = 0 if right is None else min(right, 0)
  return left, right


def position_allowed(q_pos, kv_pos, *, offset, left: int | None, right: int | None,
                     sink_tokens: int = 0):
  """The structural mask predicate, shared by the dense masks and the blockwise kernel.

  Args:
    q_pos: integer query positions, broadcastable against `kv_pos`.
    kv_pos: integer key positions.
    offset: kv_len - q_len (bottom-right alignment).
    left, right: window reach from `window_bounds` (None = unbounded).
    sink_tokens: the first `sink_tokens` keys are exempt from the left reach (first-token
      sinks); the right reach (causality) still applies to them.
  """
  diag = q_pos + offset
  allowed = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_pos), jnp.shape(kv_pos)), jnp.bool_)
  if left is not None:
    allowed &= (kv_pos >= diag - left) | (kv_pos < sink_tokens)
  if right is not None:
    allowed &= kv_pos <= diag + right
  return allowed


def causal_mask(q_len: int, kv_len: int | None = None):
  """[q_len, kv_len] lower-triangular mask aligned bottom-right."""
  return local_window_mask(q_len, kv_len, None, causal=True)


def local_window_mask(q_len: int, kv_len: int | None, local_window: Window, *, causal=False,
                      sink_tokens: int = 0):
  """[q_len, kv_len] mask of keys within `local_window` of each query's aligned diagonal (and
  the first `sink_tokens` keys)."""
  kv_len = q_len if kv_len is None else kv_len
  left, right = window_bounds(local_window, causal)
  return position_allowed(jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :],
                          offset=kv_len - q_len, left=left, right=right, sink_tokens=sink_tokens)


def padding_mask(lengths, max_len: int):
  """[batch, 1, 1, max_len] mask of the first `lengths[b]` keys of each sequence."""
  return (jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None])[:, None, None, :]


def segment_mask(q_segment_ids, kv_segment_ids=None):
  """[batch, 1, q_len, kv_len] mask letting tokens attend only within their packed segment."""
  kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
  q_ids, kv_ids = jnp.asarray(q_segment_ids), jnp.asarray(kv_segment_ids)
  return (q_ids[:, :, None] == kv_ids[:, None, :])[:, None]


def combine_masks(*masks):
  """Logical AND of the given masks (Nones ignored); None if all are None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


def split_segment_ids(segment_ids, batch: int, q_len: int, kv_len: int):
  """Validates `segment_ids` and returns (q_ids [batch, q_len], kv_ids [batch, kv_len]).

  `segment_ids` is one int array [batch, length] for self-attention (q_len == kv_len) or a
  pair (q_ids, kv_ids) for cross-attention or a KV cache.
  """
  if segment_ids is None:
    return None, None
  if isinstance(segment_ids, (tuple, list)):
    if len(segment_ids) != 2:
      raise ValueError("`segment_ids` must be one array [batch, length] or a pair "
                       f"(q_segment_ids, kv_segment_ids), got {len(segment_ids)} arrays.")
    q_ids, kv_ids = segment_ids
  else:
    if q_len != kv_len:
      raise ValueError(f"one `segment_ids` array needs q_len == kv_len (got {q_len} and "
                       f"{kv_len}); pass a pair (q_segment_ids, kv_segment_ids) instead.")
    q_ids = kv_ids = segment_ids
  for name, ids, length in (("q", q_ids, q_len), ("kv", kv_ids, kv_len)):
    if jnp.shape(ids) != (batch, length):
      raise ValueError(f"{name} segment ids must have shape [batch, {name}_len] = "
                       f"({batch}, {length}), got {jnp.shape(ids)}.")
    if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
      raise ValueError(f"segment ids must be integers, got dtype {jnp.result_type(ids)}.")
  return jnp.asarray(q_ids, jnp.int32), jnp.asarray(kv_ids, jnp.int32)


def dense_mask(batch: int, q_len: int, kv_len: int, *, mask=None, causal=False,
               kv_lengths=None, segment_ids=None, local_window: Window = None):
  """Combines every mask kind into one boolean mask, or None if nothing is masked.

  Returns:
    None or a boolean array broadcastable to [batch, heads, q_len, kv_len] (rank 4).
  """
  structural = None
  left, right = window_bounds(local_window, causal)
  if left is not None or right is not None:
    structural = position_allowed(jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :],
                                  offset=kv_len - q_len, left=left, right=right)[None, None]
  lengths = None if kv_lengths is None else padding_mask(kv_lengths, kv_len)
  q_ids, kv_ids = split_segment_ids(segment_ids, batch, q_len, kv_len)
  segments = None if q_ids is None else segment_mask(q_ids, kv_ids)
  return combine_masks(mask, structural, lengths, segments)


def rows_with_keys(batch: int, q_len: int, kv_len: int, *, causal=False, kv_lengths=None,
                   segment_ids=None, local_window: Window = None):
  """bool [batch, q_len]: whether each query may attend at least one key; None if all may.

  Kernels that cannot zero fully masked rows themselves (the vendor ones) use this to follow
  our convention that such rows give zeros. Without segment ids it is closed-form, O(q_len)
  per row of the batch. With segment ids it checks every (query, key) pair in chunks of
  queries: O(q_len·kv_len) comparisons, no [q_len, kv_len] array.
  """
  left, right = window_bounds(local_window, causal)
  diag = np.arange(q_len) + (kv_len - q_len)  # numpy: the structure is static
  lo = np.zeros((q_len,), np.int32) if left is None else np.maximum(diag - left, 0)
  hi = np.full((q_len,), kv_len - 1) if right is None else np.minimum(diag + right, kv_len - 1)
  q_ids, kv_ids = split_segment_ids(segment_ids, batch, q_len, kv_len)
  if q_ids is None and kv_lengths is None and np.all(lo <= hi):
    return None
  lo, hi = jnp.asarray(lo, jnp.int32)[None], jnp.asarray(hi, jnp.int32)[None]  # [1, q_len]
  if kv_lengths is not None:
    hi = jnp.minimum(hi, jnp.asarray(kv_lengths, jnp.int32)[:, None] - 1)
  if q_ids is None:
    return jnp.broadcast_to(lo <= hi, (batch, q_len))
  chunk = max(1, min(q_len, 2 ** 22 // max(kv_len, 1)))
  pad = -q_len % chunk
  lo, hi = (jnp.pad(jnp.broadcast_to(x, (batch, q_len)), ((0, 0), (0, pad))) for x in (lo, hi))
  q_ids = jnp.pad(q_ids, ((0, 0), (0, pad)))
  kv_pos = jnp.arange(kv_len)

  def one_chunk(args):  # [batch, chunk] each
    lo, hi, q_ids = args
    visible = ((kv_pos >= lo[..., None]) & (kv_pos <= hi[..., None])
               & (kv_ids[:, None, :] == q_ids[..., None]))
    return jnp.any(visible, axis=-1)

  split = lambda x: x.reshape(batch, -1, chunk).transpose(1, 0, 2)
  found = jax.lax.map(one_chunk, (split(lo), split(hi), split(q_ids)))
  return found.transpose(1, 0, 2).reshape(batch, -1)[:, :q_len]
