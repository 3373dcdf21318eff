"""Input validation shared by the kernels: clear ValueErrors instead of XLA tracebacks."""

from __future__ import annotations

import numbers

import numpy as np
import jax.numpy as jnp


def shape_of(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def check_qkv(query, key, value, match_head_dims: bool = True
              ) -> tuple[int, int, int, int, int, int, int]:
  """Checks the `[batch, length, heads, head_dim]` layout of query, key and value.

  Returns:
    (batch, q_len, heads, kv_len, kv_heads, head_dim, value_dim).
  """
  for name, x in (("query", query), ("key", key), ("value", value)):
    if np.ndim(x) != 4:
      raise ValueError(
          f"`{name}` must have rank 4 [batch, length, heads, head_dim], got shape "
          f"{shape_of(x)} (rank {np.ndim(x)}). For a single example add a batch axis "
          "with x[None]; for a single head add a heads axis with x[:, :, None].")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"`{name}` must be a floating-point array, got dtype {jnp.result_type(x)}.")
  b, tq, h, d = shape_of(query)
  bk, tk, kh, dk = shape_of(key)
  bv, tv, vh, dv = shape_of(value)
  if bk != b or bv != b:
    raise ValueError(f"batch sizes differ: query {b}, key {bk}, value {bv}.")
  if tv != tk:
    raise ValueError(f"`key` and `value` must have the same length, got key {shape_of(key)} "
                     f"and value {shape_of(value)}.")
  if vh != kh:
    raise ValueError(f"`key` and `value` must have the same number of heads, got key {kh} "
                     f"and value {vh}.")
  if match_head_dims and dk != d:
    raise ValueError(f"`query` and `key` head_dim differ: query {shape_of(query)} has "
                     f"{d}, key {shape_of(key)} has {dk}.")
  if h % kh:
    raise ValueError(
        f"query heads ({h}) must be a multiple of key/value heads ({kh}) for grouped-query "
        "attention (heads % kv_heads == 0).")
  return b, tq, h, tk, kh, d, dv


def as_rank4(x, name: str, target: tuple[int, int, int, int]):
  """Checks that `x` broadcasts to `target` [batch, heads, q_len, kv_len]; returns it rank 4."""
  if x is None:
    return None
  shape = shape_of(x)
  if len(shape) > 4:
    raise ValueError(f"`{name}` must broadcast to [batch, heads, q_len, kv_len] = {target}, "
                     f"got rank {len(shape)} shape {shape}.")
  shape4 = (1,) * (4 - len(shape)) + shape
  for axis, (got, want) in enumerate(zip(shape4, target)):
    if got not in (1, want):
      axis_name = ("batch", "heads", "q_len", "kv_len")[axis]
      raise ValueError(
          f"`{name}` of shape {shape} does not broadcast to [batch, heads, q_len, kv_len] = "
          f"{target}: its {axis_name} axis has size {got}, expected 1 or {want}.")
  return jnp.reshape(x, shape4)


def check_mask_dtype(mask, name: str = "mask"):
  if mask is not None and jnp.result_type(mask) != jnp.bool_:
    raise ValueError(f"`{name}` must be boolean (True = may attend), got dtype "
                     f"{jnp.result_type(mask)}. Use `{name}.astype(bool)` or pass an additive "
                     "`bias` instead.")


def check_dropout(dropout_rate: float, dropout_rng, deterministic: bool = False) -> bool:
  """Returns whether dropout is active; raises if it is active without a PRNG key."""
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"`dropout_rate` must be in [0, 1), got {dropout_rate}.")
  active = dropout_rate > 0.0 and not deterministic
  if active and dropout_rng is None:
    raise ValueError(f"`dropout_rate={dropout_rate}` needs a PRNG key: pass "
                     "`dropout_rng=jax.random.key(...)`, or `dropout_rate=0.0` for no dropout.")
  return active


def check_lengths(lengths, name: str, batch: int):
  if lengths is None:
    return None
  if shape_of(lengths) != (batch,):
    raise ValueError(f"`{name}` must have shape [batch] = ({batch},), got {shape_of(lengths)}.")
  if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
    raise ValueError(f"`{name}` must be integer, got dtype {jnp.result_type(lengths)}.")
  return jnp.asarray(lengths, jnp.int32)


def default_scale(scale, head_dim: int) -> float:
  return 1.0 / float(np.sqrt(head_dim)) if scale is None else float(scale)


def accum_dtype(*xs):
  """Dtype to accumulate scores in: float32, or float64 when inputs are float64."""
  return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def check_soft_cap(cap) -> float | None:
  """`logits_soft_cap` as a positive float, or None (no cap)."""
  if cap is None:
    return None
  if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not cap > 0:
    raise ValueError(f"`logits_soft_cap` must be a positive number (Gemma 2 uses 50.0) or None, "
                     f"got {cap!r}.")
  return float(cap)


def check_sinks(sinks, heads: int):
  """Learned sink logits as a [heads] array (a scalar is every head's), or None (no sinks)."""
  if sinks is None:
    return None
  if shape_of(sinks) not in ((heads,), ()):
    raise ValueError(f"`sinks` must hold one learned logit per query head, shape [heads] = "
                     f"({heads},) (or one scalar for all), got {shape_of(sinks)}. (First-token "
                     "sinks beside a window are `sink_tokens`, an integer.)")
  if not jnp.issubdtype(jnp.result_type(sinks), jnp.floating):
    raise ValueError(f"`sinks` must be floating-point logits, got dtype "
                     f"{jnp.result_type(sinks)}.")
  return jnp.broadcast_to(jnp.asarray(sinks), (heads,))


def sinks_per_head(sinks):
  """[heads] sinks as the [1, heads] extra `vmap_heads` slices per head (None stays None)."""
  return None if sinks is None else sinks[None]
