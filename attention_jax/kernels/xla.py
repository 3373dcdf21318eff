"""`jax.nn.dot_product_attention` (XLA or cuDNN) behind our kernel interface."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax.kernels.dot_product import prepare_common


def xla_attention(query, key, value, *, bias=None, mask=None, causal=False, kv_lengths=None,
                  segment_ids=None, local_window=None, scale=None, implementation="xla"):
  """`jax.nn.dot_product_attention` with our masks and conventions.

  Our bottom-right causal alignment, windows and segments are folded into one boolean mask,
  and rows with no visible key are zeroed (jax.nn would average every value there), so the
  result equals `dot_product_attention`. Arguments as there; `implementation` is passed on.
  """
  bias4, allowed, _ = prepare_common(
      query, key, value, bias=bias, mask=mask, causal=causal, kv_lengths=kv_lengths,
      segment_ids=segment_ids, local_window=local_window, dropout_rate=0.0, dropout_rng=None,
      deterministic=True)
  h = query.shape[2]
  if bias4 is not None:
    bias4 = jnp.broadcast_to(bias4, (bias4.shape[0], h) + bias4.shape[2:]).astype(query.dtype)
  if allowed is not None:
    allowed = jnp.broadcast_to(allowed, (allowed.shape[0], h) + allowed.shape[2:])
  out = jax.nn.dot_product_attention(query, key, value, bias=bias4, mask=allowed,
                                     scale=scale, implementation=implementation)
  if allowed is not None:
    has_key = jnp.any(allowed, axis=-1)  # [batch|1, heads, q_len|1]
    out = out * has_key.transpose(0, 2, 1)[..., None].astype(out.dtype)
  return out


def cudnn_attention(query, key, value, *, bias=None, mask=None, causal=False, kv_lengths=None,
                    segment_ids=None, local_window=None, scale=None):
  """cuDNN's fused attention (GPU only; float16/bfloat16). Arguments as `xla_attention`."""
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
