"""The bounded cache of a sliding-window decoder: attention sinks plus the last w + 1 keys.

Pure functions on the cache arrays; `MultiHeadAttention` keeps them in its 'cache'
collection. Slots 0..sinks-1 hold the first `sinks` positions, the other w + 1 slots are a
ring: position p (p >= sinks) lives in slot sinks + (p - sinks) % (w + 1). The cache's size
is fixed by the window, not by the length decoded.
"""

from __future__ import annotations

import jax.numpy as jnp


def window_cache_size(left: int, sinks: int) -> int:
  return sinks + left + 1


def window_mask(q_pos, q_seg, kv_pos, kv_seg, *, left: int, sinks: int):
  """bool [batch, 1, q, kv]: key visible iff filled (position >= 0), not in the future,
  within `left` of the query or a sink, and in the query's segment. Positions [batch, n]."""
  q_pos, q_seg = q_pos[:, :, None], q_seg[:, :, None]
  kv_pos, kv_seg = kv_pos[:, None, :], kv_seg[:, None, :]
  visible = ((kv_pos >= 0) & (kv_pos <= q_pos) & ((q_pos - kv_pos <= left) | (kv_pos < sinks))
             & (kv_seg == q_seg))
  return visible[:, None]


def write_window(cache: dict, new: dict, positions, *, left: int, sinks: int) -> dict:
  """The cache after writing the new tokens' entries (each [batch, n, ...]) at their slots.

  Where several new tokens map to one slot (a prompt longer than the window), the last one
  wins. `cache` and `new` have the same keys; `positions` [batch, n].
  """
  batch, n = positions.shape
  size = window_cache_size(left, sinks)
  slots = jnp.where(positions < sinks, positions, sinks + (positions - sinks) % (left + 1))
  rows = jnp.arange(batch)[:, None]
  writer = jnp.full((batch, size), -1, jnp.int32).at[rows, slots].max(
      jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n)))
  written = writer >= 0
  source = jnp.maximum(writer, 0)

  def write(old, fresh):
    taken = jnp.take_along_axis(fresh, source.reshape(source.shape + (1,) * (fresh.ndim - 2)),
                                axis=1)
    return jnp.where(written.reshape(written.shape + (1,) * (old.ndim - 2)), taken, old)

  return {name: write(cache[name], new[name]) for name in cache}
