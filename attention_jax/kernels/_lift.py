"""Lifting a one-head kernel to [batch, length, heads, head_dim] with jax.vmap.

Grouped-query attention is a vmap too: query heads are split into [kv_heads, group] and the
group axis is mapped with key/value unmapped (in_axes=None), so K and V are never repeated.
Axes of size 1 are squeezed rather than mapped (XLA:CPU runs dots with fewer batch axes faster).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def vmap_heads(per_head: Callable[..., Any], query, key, value, *extras):
  """Applies `per_head(q, k, v, *extras_per_head)` to every (batch, head).

  Args:
    per_head: function of one head: q [q_len, d], k [kv_len, d], v [kv_len, dv], extras.
    query: [batch, q_len, heads, d]; key, value: [batch, kv_len, kv_heads, d|dv].
    *extras: None or arrays with leading [batch or 1, heads or 1] axes; each head gets its
      slice (size-1 axes are shared, not copied).

  Returns:
    The per-head result pytree with leading [batch, heads] axes.
  """
  b, tq, h, d = query.shape
  kh = key.shape[2]
  g = h // kh
  sizes = (b, kh, g)  # the levels: batch, kv head, query head within the group
  q = query.reshape(b, tq, kh, g, d).transpose(0, 2, 3, 1, 4)  # [b, kh, g, tq, d]
  k = key.transpose(0, 2, 1, 3)[:, :, None]  # [b, kh, 1, tk, d]
  v = value.transpose(0, 2, 1, 3)[:, :, None]
  args = [q, k, v]
  for x in extras:
    if x is not None:
      eb, eh = np.shape(x)[:2]
      x = x.reshape(((eb, kh, g) if eh > 1 else (eb, 1, 1)) + np.shape(x)[2:])
    args.append(x)

  mapped = [size > 1 for size in sizes]
  # Squeeze every level's axis where it has size 1; map levels of size > 1.
  squeezed = []
  for x in args:
    if x is None:
      squeezed.append(None)
      continue
    keep = [m and x.shape[i] > 1 for i, m in enumerate(mapped)]
    x = x.reshape(tuple(s for s, kp in zip(x.shape[:3], keep) if kp) + x.shape[3:])
    squeezed.append((x, keep))

  fn = per_head
  for level in reversed(range(3)):
    if not mapped[level]:
      continue
    in_axes = []
    for item in squeezed:
      if item is None:
        in_axes.append(None)
      else:
        _, keep = item
        in_axes.append(0 if keep[level] else None)
    fn = jax.vmap(fn, in_axes=tuple(in_axes))
  result = fn(*[None if item is None else item[0] for item in squeezed])
  n_lead = sum(mapped)
  return jax.tree.map(lambda x: x.reshape((b, h) + x.shape[n_lead:]), result)


def heads_last(out):
  """[batch, heads, q_len, dv] -> [batch, q_len, heads, dv]."""
  return out.transpose(0, 2, 1, 3)
