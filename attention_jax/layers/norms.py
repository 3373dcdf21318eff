"""Normalisation layers by name: a config's `norm` ("layer" or "rms")."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

NORMS = ("layer", "rms")


def make_norm(kind: str, *, epsilon: float, dtype: Any, param_dtype: Any,
              name: str | None = None) -> nn.Module:
  """LayerNorm ("layer") or RMSNorm, scale only ("rms"), over the last axis."""
  if kind not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}.")
  norm = nn.RMSNorm if kind == "rms" else nn.LayerNorm
  return norm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)
