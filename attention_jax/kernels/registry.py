"""One registry of attention kernels, selected by name: `kernels.get("flash")`."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels.additive import additive_attention
from attention_jax.kernels.dot_product import dot_product_attention
from attention_jax.kernels.flash import flash_attention
from attention_jax.kernels.relative import relative_attention
from attention_jax.kernels.xla import cudnn_attention, xla_attention

# `auto` uses the blockwise kernel once the score matrix has at least this many entries per
# head: on a 2-core CPU the dense kernel is faster at T=512 and the blockwise one from
# T=1024 (README's benchmark table).
AUTO_FLASH_MIN_SCORES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A registered kernel: call it like the function it wraps; its fields say what it takes."""
  name: str
  fn: Callable
  description: str

  @property
  def arguments(self) -> frozenset[str]:
    return frozenset(inspect.signature(self.fn).parameters)

  def supports(self, argument: str) -> bool:
    return argument in self.arguments

  def __call__(self, query, key, value, *args, **kwargs):
    unknown = sorted(set(kwargs) - self.arguments)
    if unknown:
      raise ValueError(f"kernel {self.name!r} does not take {unknown}. Kernels that do: "
                       f"{', '.join(supporting(*unknown)) or 'none'}.")
    return self.fn(query, key, value, *args, **kwargs)


_KERNELS: dict[str, Kernel] = {}


def register(name: str, fn: Callable, description: str = "") -> Kernel:
  """Adds a kernel `fn(query, key, value, **kwargs)` under `name`; returns its entry."""
  if name in _KERNELS:
    raise ValueError(f"an attention kernel named {name!r} is already registered.")
  _KERNELS[name] = Kernel(name, fn, description or (fn.__doc__ or "").strip().split("\n")[0])
  return _KERNELS[name]


def names() -> list[str]:
  """Names of all registered kernels."""
  return sorted(_KERNELS)


def supporting(*arguments: str) -> list[str]:
  """Names of the registered kernels that take all of `arguments`."""
  return [name for name in names() if all(_KERNELS[name].supports(a) for a in arguments)]


def get(name: str | Callable) -> Kernel:
  """The kernel registered as `name` (a callable is wrapped as is)."""
  if callable(name) and not isinstance(name, str):
    return name if isinstance(name, Kernel) else Kernel(getattr(name, "__name__", "custom"),
                                                        name, "user-supplied kernel")
  if name not in _KERNELS:
    raise ValueError(f"unknown attention kernel {name!r}; valid names: {', '.join(names())}.")
  if name == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"kernel 'cudnn' needs an NVIDIA GPU, but JAX's backend is "
                     f"{jax.default_backend()!r}; valid here: "
                     f"{', '.join(n for n in names() if n != 'cudnn')}.")
  return _KERNELS[name]


def choose(query, key, *, bias=None, dropout_rate=0.0, deterministic=False,
           return_weights=False) -> str:
  """The name of the fastest correct kernel for these arguments on this platform."""
  dense_only = bias is not None or return_weights or (dropout_rate > 0 and not deterministic)
  if dense_only:
    return "dot_product"
  if (jax.default_backend() == "gpu" and query.shape[-1] % 8 == 0 and query.shape[-1] <= 128
      and jnp.result_type(query) in (jnp.float16, jnp.bfloat16)):
    return "cudnn"
  if query.shape[1] * key.shape[1] >= AUTO_FLASH_MIN_SCORES:
    return "flash"
  return "dot_product"


def auto_attention(query, key, value, *, bias=None, mask=None, causal=False, kv_lengths=None,
                   segment_ids=None, local_window=None, scale=None, dropout_rate=0.0,
                   dropout_rng=None, deterministic=False, return_weights=False):
  """Dispatches to `choose(...)`'s kernel; arguments as `dot_product_attention`."""
  _checks.check_qkv(query, key, value)
  name = choose(query, key, bias=bias, dropout_rate=dropout_rate,
                deterministic=deterministic, return_weights=return_weights)
  kwargs = dict(mask=mask, causal=causal, kv_lengths=kv_lengths, segment_ids=segment_ids,
                local_window=local_window, scale=scale)
  if name == "dot_product":
    kwargs.update(bias=bias, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                  deterministic=deterministic, return_weights=return_weights)
  return _KERNELS[name].fn(query, key, value, **kwargs)


register("dot_product", dot_product_attention)
register("flash", flash_attention)
register("additive", additive_attention)
register("relative", relative_attention)
register("xla", xla_attention)
register("cudnn", cudnn_attention)
register("auto", auto_attention)
