"""LoRA (Hu et al. 2021): a trainable low-rank update beside a frozen projection.

A targeted projection y = x W + b gains y += (alpha / rank) * (x A) B, with A [in, rank]
random and B [rank, out] zero, so training starts from the unchanged model. The adapter is a
sibling of the projection it adapts (`query` -> `query_lora/{a,b}`), so the base parameter
paths never change; `merge` folds every adapter into its W for inference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

TARGETS = ("query", "key", "value", "out", "fc1", "gate", "fc2")  # fc1/gate/fc2: up/gate/down
SUFFIX = "_lora"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """rank r and scale alpha / r of the adapters on the named projections (see TARGETS)."""
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ("query", "value")

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {self.rank}.")
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown or not self.targets:
      raise ValueError(f"LoRA targets must be a non-empty subset of {TARGETS}, got "
                       f"{tuple(self.targets)}.")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class LoraAdapter(nn.Module):
  """x [..., *in_shape] (the last `in_ndim` axes contracted) -> scale * (x A) B
  [..., *out_shape]."""
  in_ndim: int
  out_shape: tuple[int, ...]
  spec: LoraSpec
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[x.ndim - self.in_ndim:]
    in_axes = tuple(range(self.in_ndim))
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the reference implementation (kaiming a=sqrt(5)).
    a = self.param("a", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                                         in_axis=in_axes, out_axis=-1),
                   (*in_shape, self.spec.rank), self.param_dtype)
    b = self.param("b", nn.initializers.zeros, (self.spec.rank, *self.out_shape),
                   self.param_dtype)
    x = x.astype(self.dtype)
    low_rank = jnp.tensordot(x, a.astype(self.dtype), axes=self.in_ndim)
    return jnp.tensordot(low_rank, b.astype(self.dtype), axes=1) * self.spec.scale


def adapter_for(module: nn.Module, spec: LoraSpec | None, target: str, x, in_ndim: int,
                out_shape: tuple[int, ...], name: str | None = None):
  """The adapter's update of projection `target` of `module` for input x, or 0 if `spec`
  does not target it; `name` is the projection's module name when it is not `target` (MLA's
  query_up). Call inside a compact method."""
  if spec is None or target not in spec.targets:
    return 0.0
  return LoraAdapter(in_ndim, tuple(out_shape), spec, module.dtype, module.param_dtype,
                     name=(name or target) + SUFFIX)(x)


def merge(params: dict, spec: LoraSpec) -> dict:
  """Parameters with every adapter folded into its kernel (W += scale * A B) and removed:
  the parameters of the same model built with `lora=None`."""
  if not isinstance(params, dict):
    return params
  merged = {}
  for name, value in params.items():
    if name.endswith(SUFFIX):
      continue
    adapter = params.get(name + SUFFIX)
    if adapter is not None:
      delta = jnp.tensordot(adapter["a"], adapter["b"], axes=1) * spec.scale
      value = {**value, "kernel": value["kernel"] + delta.reshape(value["kernel"].shape)
               .astype(value["kernel"].dtype)}
    merged[name] = merge(value, spec)
  return merged


def is_adapter(path: tuple[str, ...]) -> bool:
  """Whether a parameter path lies inside a LoRA adapter."""
  return any(part.endswith(SUFFIX) for part in path)
