"""Decoding caches: what an attention layer keeps in its 'cache' collection from one call to
the next, one class per kernel `decoding` (`for_kernel` picks it):
  "kv_cache": `KVCache`, every key and value so far, attended through the layer's kernel;
    a layer with a `local_window` (Mistral, Gemma's sliding layers) keeps a `WindowCache`
    of the window instead; multi-head latent attention's absorbed decoding keeps a KVCache
    of the latent alone (`KVCache.append`);
  "window": `WindowCache`, first-token sinks plus the last w + 1 keys of a sliding window;
  "state": `StateCache`, a recurrent kernel's fixed-size state.
Each is called as `cache(query, key, value, inputs, attend) -> out [batch, q, heads, dim]`
inside the layer (its variables are the layer's), and advances the layer's 'cache_index'.

With s = sink_tokens, the window cache's slots 0..s-1 hold the first s positions (the
first-token sinks), the other w + 1 slots are a ring: position p (p >= s) lives in slot
s + (p - s) % (w + 1). Its size is fixed by the window, not by the length decoded (the pure
functions below).
"""

from __future__ import annotations

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax import kernels
from attention_jax.layers.inputs import AttentionInputs


def window_cache_size(left: int, sink_tokens: int) -> int:
  return sink_tokens + left + 1


def window_mask(q_pos, q_seg, kv_pos, kv_seg, *, left: int, sink_tokens: int):
  """bool [batch, 1, q, kv]: key visible iff filled (position >= 0), not in the future,
  within `left` of the query or a sink, and in the query's segment. Positions [batch, n]."""
  q_pos, q_seg = q_pos[:, :, None], q_seg[:, :, None]
  kv_pos, kv_seg = kv_pos[:, None, :], kv_seg[:, None, :]
  visible = ((kv_pos >= 0) & (kv_pos <= q_pos) & ((q_pos - kv_pos <= left) | (kv_pos < sink_tokens))
             & (kv_seg == q_seg))
  return visible[:, None]


def write_window(cache: dict, new: dict, positions, *, left: int, sink_tokens: int) -> dict:
  """The cache after writing the new tokens' entries (each [batch, n, ...]) at their slots.

  Where several new tokens map to one slot (a prompt longer than the window), the last one
  wins. `cache` and `new` have the same keys; `positions` [batch, n].
  """
  batch, n = positions.shape
  size = window_cache_size(left, sink_tokens)
  slots = jnp.where(positions < sink_tokens, positions,
                    sink_tokens + (positions - sink_tokens) % (left + 1))
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


class KVCache:
  """Keys and values of every position so far, [batch, max_len, kv_heads, head_dim], sized by
  the input the layer is initialised with; each call writes its tokens at the cache index
  and attends over the whole cache as in training, through the layer's kernel, with a mask
  that holds causality. Writing past the end is the caller's error (`generate` checks
  lengths before it starts)."""

  def __init__(self, module: nn.Module, kernel, index):
    self.module, self.kernel, self.index = module, kernel, index

  def append(self, new: dict, inputs: AttentionInputs
             ) -> tuple[dict | None, AttentionInputs]:
    """Writes each new [batch, n, ...] array of `new` {variable name: array} at the cache
    index and advances it; returns every cached array so far and `inputs` with a mask that
    holds causality over them. While initialising, the variables are made the shape of
    `new` and (None, inputs) is returned."""
    cached = {name: self.module.variable("cache", name, jnp.zeros, x.shape, x.dtype)
              for name, x in new.items()}
    if self.module.is_initializing():
      return None, inputs
    start, count = self.index.value, next(iter(new.values())).shape[1]
    for name, x in new.items():
      cached[name].value = lax.dynamic_update_slice(cached[name].value, x,
                                                    (0, start) + (0,) * (x.ndim - 2))
    self.index.value = start + count
    length = cached[next(iter(new))].value.shape[1]
    distance = (start + jnp.arange(count))[:, None] - jnp.arange(length)[None]
    visible = (distance >= 0)[None, None]
    mask = visible if inputs.mask is None else jnp.logical_and(inputs.mask, visible)
    # The mask is causal already.
    return ({name: variable.value for name, variable in cached.items()},
            inputs.replace(mask=mask, causal=False))

  def __call__(self, query, key, value, inputs: AttentionInputs, attend):
    """`attend(query, key, value, inputs, local_window)` is the layer's kernel call."""
    cached, cache_inputs = self.append({"cached_key": key, "cached_value": value}, inputs)
    if cached is None:
      return attend(query, key, value, inputs, self.module.local_window)
    return attend(query, cached["cached_key"], cached["cached_value"], cache_inputs, None)


class _SegmentCache:
  """A cache that takes padding and packing as segment ids only (no dense mask, no lengths)."""

  def __init__(self, module: nn.Module, kernel, index):
    self.module, self.kernel, self.index = module, kernel, index

  def _segments(self, inputs: AttentionInputs):
    """The new tokens' segment ids [batch, n] (or None)."""
    if inputs.mask is not None or inputs.kv_lengths is not None:
      raise ValueError(f"kernel {self.kernel.name!r} decodes with a {self.kernel.decoding} "
                       "cache, which takes segment ids, not a dense mask or lengths: pass "
                       "`segment_ids` (e.g. 0 for padding, 1 for real tokens).")
    segment_ids = inputs.segment_ids
    if isinstance(segment_ids, (tuple, list)):  # (new tokens' ids, cache ids): the first
      segment_ids = segment_ids[0]
    return segment_ids


class StateCache(_SegmentCache):
  """A recurrent kernel's fixed-size RecurrentState (no keys), continued by every call: O(1)
  memory per layer in the length decoded."""

  def __call__(self, query, key, value, inputs: AttentionInputs, attend):
    del attend  # the kernel runs as a recurrence
    segment_ids = self._segments(inputs)
    kwargs = {} if segment_ids is None else {"segment_ids": segment_ids}
    if self.module.is_initializing():
      out, state = self.kernel(query, key, value, causal=True, return_state=True, **kwargs)
      self.module.variable("cache", "recurrent_state",
                           lambda: jax.tree.map(jnp.zeros_like, state))
      return out
    state = self.module.variable("cache", "recurrent_state", lambda: None)
    out, state.value = self.kernel(query, key, value, causal=True, state=state.value,
                                   return_state=True, **kwargs)
    self.index.value = self.index.value + query.shape[1]
    return out


class WindowCache(_SegmentCache):
  """A sliding window's bounded cache: the first-token sinks plus the last w + 1 keys
  (`window_cache_size`; no more than the length the layer is initialised with), whatever
  the length decoded, attended with `window_mask`. For the `sliding_window` kernel the
  window and sinks are its own defaults (or the layer's local_window) and flash attends;
  for a layer with a `local_window` over another kernel, that kernel attends (no sinks)."""
  NAMES = ("cached_key", "cached_value", "cached_position", "cached_segment")

  def _window(self) -> tuple[int, int, object]:
    """(left window, first-token sinks, kernel that attends over the cache)."""
    window = self.module.local_window
    if self.kernel.decoding != "window":
      return window, 0, self.kernel
    options = inspect.signature(self.kernel.fn).parameters
    window = options["local_window"].default if window is None else window
    left = window if isinstance(window, int) else int(window[0])
    return left, int(options["sink_tokens"].default), kernels.get("flash")

  def __call__(self, query, key, value, inputs: AttentionInputs, attend):
    """`attend(query, key, value, inputs, local_window, kernel=...)` is the layer's kernel
    call, with its sinks, soft-capping and scale."""
    segment_ids = self._segments(inputs)
    left, sink_tokens, attending = self._window()
    batch, n = query.shape[:2]
    variable = self.module.variable
    if self.module.is_initializing():
      size = min(window_cache_size(left, sink_tokens), key.shape[1])
      variable("cache", "cached_key", jnp.zeros, (batch, size) + key.shape[2:], key.dtype)
      variable("cache", "cached_value", jnp.zeros, (batch, size) + value.shape[2:],
               value.dtype)
      # Positions are stored + 1 so that a zeroed cache (`generation.init_cache`) is empty.
      variable("cache", "cached_position", jnp.zeros, (batch, size), jnp.int32)
      variable("cache", "cached_segment", jnp.zeros, (batch, size), jnp.int32)
      return attend(query, key, value, AttentionInputs(causal=True), left)
    cache = {name: variable("cache", name, lambda: None) for name in self.NAMES}
    size = cache["cached_key"].value.shape[1]
    q_seg = jnp.zeros((batch, n), jnp.int32) if segment_ids is None else segment_ids
    q_pos = self.index.value + jnp.arange(n)[None] if inputs.positions is None else (
        inputs.positions)
    q_pos = jnp.broadcast_to(q_pos, (batch, n)).astype(jnp.int32)
    new = dict(cached_key=key, cached_value=value, cached_position=q_pos + 1,
               cached_segment=q_seg)
    joined = {name: jnp.concatenate([cache[name].value, new[name]], axis=1)
              for name in self.NAMES}
    mask = window_mask(q_pos, q_seg, joined["cached_position"] - 1, joined["cached_segment"],
                       left=left, sink_tokens=sink_tokens)
    out = attend(query, joined["cached_key"], joined["cached_value"],
                 AttentionInputs(mask=mask), None, kernel=attending)
    written = write_window({name: cache[name].value for name in self.NAMES}, new, q_pos,
                           left=size - sink_tokens - 1, sink_tokens=sink_tokens)
    for name in self.NAMES:
      cache[name].value = written[name]
    self.index.value = self.index.value + n
    return out


CACHES = {"kv_cache": KVCache, "state": StateCache, "window": WindowCache}


def for_kernel(kernel, module: nn.Module, index):
  """The cache of `kernel.decoding` for attention layer `module`, whose 'cache_index'
  variable is `index`: a bounded `WindowCache` for a KV-cache kernel in a layer with a
  local window."""
  if kernel.decoding == "kv_cache" and module.local_window is not None:
    return WindowCache(module, kernel, index)
  return CACHES[kernel.decoding](module, kernel, index)
