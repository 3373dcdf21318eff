"""Normalisation layers by name: a config's `norm` ("layer", "rms" or "rms_unit_offset")."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

NORMS = ("layer", "rms", "rms_unit_offset")


class UnitOffsetRMSNorm(nn.Module):
  """RMSNorm whose weight is an offset from one, x / rms(x) · (1 + scale), with scale zeros at
  init (Gemma). Computed in float32, the weight applied before the cast back, as Gemma's
  reference does. [..., features] -> same shape."""
  epsilon: float = 1e-6
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],), self.param_dtype)
    y = x.astype(jnp.float32)
    y = y * lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + self.epsilon)
    return (y * (1.0 + scale.astype(jnp.float32))).astype(self.dtype or x.dtype)


def make_norm(kind: str, *, epsilon: float, dtype: Any, param_dtype: Any,
              name: str | None = None) -> nn.Module:
  """LayerNorm ("layer"), RMSNorm with a scale ("rms") or with 1 + scale ("rms_unit_offset",
  Gemma), over the last axis."""
  if kind not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}.")
  norm = {"layer": nn.LayerNorm, "rms": nn.RMSNorm, "rms_unit_offset": UnitOffsetRMSNorm}[kind]
  return norm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
