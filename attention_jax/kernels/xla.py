"""`jax.nn.dot_product_attention` (XLA or cuDNN) behind our kernel interface."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels import masks as masks_lib


def native_arguments(q_len: int, kv_len: int, *, causal=False, kv_lengths=None,
                     local_window=None):
  """Maps our structural masks onto `jax.nn.dot_product_attention`'s own arguments.

  cuDNN skips the blocks these rule out and builds no mask. What it can express: causal
  and a left window (`sliding_window_length`) when q_len == kv_len (jax.nn aligns them
  top-left, we align bottom-right, so they agree only for equal lengths), and key lengths.

  Returns:
    (kwargs for jax.nn.dot_product_attention, dense_structure): `dense_structure` is True
    when the causal/window structure must go into a dense mask instead.
  """
  left, right = masks_lib.window_bounds(local_window, causal)
  kwargs = {}
  dense_structure = False
  if right is not None or left is not None:
    if q_len == kv_len and right == 0:  # causal, optionally with a left window
      kwargs["is_causal"] = True
      if left is not None:
        kwargs["local_window_size"] = (left, 0)
    else:
      dense_structure = True
  if kv_lengths is not None:
    # A row of length 0 has no key; give cuDNN one and zero the row afterwards.
    kwargs["key_value_seq_lengths"] = jnp.maximum(jnp.asarray(kv_lengths, jnp.int32), 1)
  return kwargs, dense_structure


# cuDNN rejects a bias (our dense masks become one) in training when a length is odd; these
# implementations get even lengths (tests add "xla" to check the padding on a CPU).
EVEN_LENGTHS_WITH_BIAS = ("cudnn",)


def _pad_end(x, axis: int, pad: int, value):
  """Pads `x` at the end of `axis` by `pad`, unless that axis is broadcast (size 1)."""
  if x is None or not pad or x.shape[axis] == 1:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _call_jax_nn(query, key, value, bias4, dense, scale, implementation, native):
  """jax.nn.dot_product_attention, with lengths made even where the implementation needs it
  for a bias: padded keys are masked out, padded query rows dropped."""
  tq, tk = query.shape[1], key.shape[1]
  pq, pk = tq % 2, tk % 2
  if (implementation not in EVEN_LENGTHS_WITH_BIAS or (bias4 is None and dense is None)
      or not (pq or pk)):
    return jax.nn.dot_product_attention(query, key, value, bias=bias4, mask=dense, scale=scale,
                                        implementation=implementation, **native)
  query = _pad_end(query, 1, pq, 0)
  key, value = _pad_end(key, 1, pk, 0), _pad_end(value, 1, pk, 0)
  bias4 = _pad_end(_pad_end(bias4, 2, pq, 0), 3, pk, 0)
  # A padded query row sees the real keys (harmless: it is dropped); a padded key is hidden.
  dense = _pad_end(_pad_end(dense, 2, pq, True), 3, pk, False)
  if pk and dense is None and "key_value_seq_lengths" not in native:
    native = dict(native, key_value_seq_lengths=jnp.full((query.shape[0],), tk, jnp.int32))
  out = jax.nn.dot_product_attention(query, key, value, bias=bias4, mask=dense, scale=scale,
                                     implementation=implementation, **native)
  return out[:, :tq]


def xla_attention(query, key, value, *, bias=None, mask=None, causal=False, kv_lengths=None,
                  segment_ids=None, local_window=None, scale=None, implementation="xla"):
  """`jax.nn.dot_product_attention` with our masks and conventions.

  Causal masks, left windows and key lengths go in as its own arguments (`is_causal`,
  `local_window_size`, `key_value_seq_lengths`), which cuDNN turns into its fast masked
  paths with no [q_len, kv_len] array. Only what has no argument goes into a dense boolean
  mask, broadcast over heads (cuDNN adds it as a bias): `mask` and `segment_ids`. Windows
  reaching right of the diagonal, and causal/windows when q_len != kv_len (jax.nn aligns them
  top-left), have no argument either: then every mask goes into the dense one (the
  fallback). Rows with no visible key are zeroed (jax.nn would average every value there),
  so the result equals `dot_product_attention`. Arguments as there; `implementation` is
  passed on.
  """
  b, tq, h, tk, _, _, _ = _checks.check_qkv(query, key, value)
  _checks.check_mask_dtype(mask)
  target = (b, h, tq, tk)
  mask = _checks.as_rank4(mask, "mask", target)
  kv_lengths = _checks.check_lengths(kv_lengths, "kv_lengths", b)
  native, dense_structure = native_arguments(tq, tk, causal=causal, kv_lengths=kv_lengths,
                                             local_window=local_window)
  every_mask = functools.partial(masks_lib.dense_mask, b, tq, tk, mask=mask, causal=causal,
                                 kv_lengths=kv_lengths, segment_ids=segment_ids,
                                 local_window=local_window)
  dense = None
  if dense_structure:
    native = {}  # the structure needs a dense mask: everything goes into it
    dense = every_mask()
  elif mask is not None or segment_ids is not None:  # structure and lengths stay native
    dense = masks_lib.dense_mask(b, tq, tk, mask=mask, segment_ids=segment_ids)
  bias4 = _checks.as_rank4(bias, "bias", target)
  if bias4 is not None:
    bias4 = jnp.broadcast_to(bias4, (bias4.shape[0], h) + bias4.shape[2:]).astype(query.dtype)
  out = _call_jax_nn(query, key, value, bias4, dense, scale, implementation, native)
  if dense is not None:  # whether any key is visible, all masks together (fused by XLA)
    has_key = jnp.any(dense if dense_structure else every_mask(), axis=-1)  # [b|1, 1|h, tq]
    has_key = has_key.transpose(0, 2, 1)[..., None]  # [b|1, tq, 1|h, 1]
  else:
    has_key = masks_lib.rows_with_keys(b, tq, tk, causal=causal, kv_lengths=kv_lengths,
                                       local_window=local_window)
    if has_key is None:
      return out
    has_key = has_key[:, :, None, None]
  return jnp.where(has_key, out, jnp.zeros((), out.dtype))


def cudnn_attention(query, key, value, *, bias=None, mask=None, causal=False, kv_lengths=None,
                    segment_ids=None, local_window=None, scale=None):
  """cuDNN's fused flash attention (GPU only; float16/bfloat16; head_dim a multiple of 8, at
  most 128, or 256 from Hopper on). Arguments and mask mapping as `xla_attention`."""
  if jax.default_backend() != "gpu":
    raise ValueError(f"kernel 'cudnn' needs an NVIDIA GPU, but JAX's backend is "
                     f"{jax.default_backend()!r}. Use 'auto' (picks the best kernel for the "
                     "platform) or 'flash'.")
  if jnp.result_type(query) not in (jnp.float16, jnp.bfloat16):
    raise ValueError(f"kernel 'cudnn' needs float16 or bfloat16 inputs, got "
                     f"{jnp.result_type(query)}; cast them or use 'xla'/'flash'.")
  return xla_attention(query, key, value, bias=bias, mask=mask, causal=causal,
                       kv_lengths=kv_lengths, segment_ids=segment_ids,
                       local_window=local_window, scale=scale, implementation="cudnn")
