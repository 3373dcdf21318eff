"""One registry of attention kernels, selected by name: `kernels.get("flash")`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from attention_jax.kernels import _checks
from attention_jax.kernels.additive import additive_attention
from attention_jax.kernels.dot_product import dot_product_attention
from attention_jax.kernels.flash import flash_attention
from attention_jax.kernels.linear import linear_attention
from attention_jax.kernels.pallas_gpu import pallas_gpu_attention
from attention_jax.kernels.performer import performer_attention
from attention_jax.kernels.relative import relative_attention
from attention_jax.kernels.retention import retention_attention
from attention_jax.kernels.ring import ring_attention
from attention_jax.kernels.sliding_window import sliding_window_attention
from attention_jax.kernels.splash import splash_attention
from attention_jax.kernels.xla import cudnn_attention, xla_attention

# `auto` uses the blockwise kernel once the score matrix has at least this many entries per
# head: on a 2-core CPU the dense kernel is faster at T=512 and the blockwise one from
# T=1024 (docs/results/2026-11-25-attention-kernels-cpu.md).
AUTO_FLASH_MIN_SCORES = 1024 * 1024
SPLASH_MIN_Q_LEN = 128
RING_AXIS = "sequence"  # the mesh axis that, when larger than 1, sends `auto` to `ring`


# Each capability a kernel may have, and the argument through which a caller asks for it.
CAPABILITIES = {
    "causal": "causal",
    "padding": "kv_lengths",
    "segments": "segment_ids",
    "mask": "mask",
    "bias": "bias",
    "dropout": "dropout_rate",
    "window": "local_window",
    "weights": "return_weights",
    "decoding_state": "state",
    "soft_cap": "logits_soft_cap",
    "learned_sinks": "sinks",
}
# What a kernel computes: the exact softmax, an estimate of it, or another attention.
COMPUTES = ("softmax", "softmax_estimate", "linear", "retention", "additive", "relative")
# How a decoder runs a kernel one token at a time: a cache of every key ("kv_cache"), a
# bounded cache of sink tokens and recent keys ("window"), or a fixed-size recurrent state
# ("state").
DECODING = ("kv_cache", "window", "state")


@dataclasses.dataclass(frozen=True)
class Kernel:
  """A registered kernel: call it like the function it wraps; its fields say what it takes.

  Attributes:
    name, fn, description.
    computes: one of COMPUTES; the tests pick each kernel's reference by it.
    decoding: one of DECODING, or None where a decoder cannot run it.
    platforms: backends it runs on natively ("cpu", "gpu", "tpu"); the Pallas kernels run
      elsewhere only with interpret=True.
    equal_head_dims: the wrapped function needs value's head_dim equal to the query's; called
      through the registry, it takes others (MLA's) with zeros padded and cut off again
      (`call_with_equal_head_dims`).
  """
  name: str
  fn: Callable
  description: str
  computes: str = "softmax"
  decoding: str | None = "kv_cache"
  platforms: tuple[str, ...] = ("cpu", "gpu", "tpu")
  equal_head_dims: bool = False

  @property
  def arguments(self) -> frozenset[str]:
    return frozenset(inspect.signature(self.fn).parameters)

  @property
  def capabilities(self) -> frozenset[str]:
    """The CAPABILITIES names this kernel has (read from the arguments it takes)."""
    return frozenset(c for c, argument in CAPABILITIES.items() if argument in self.arguments)

  def supports(self, argument: str) -> bool:
    return argument in self.arguments

  def __call__(self, query, key, value, *args, **kwargs):
    unknown = sorted(set(kwargs) - self.arguments)
    if unknown:
      raise ValueError(f"kernel {self.name!r} does not take {unknown}. Kernels that do: "
                       f"{', '.join(supporting(*unknown)) or 'none'}.")
    if self.equal_head_dims and not args:
      return call_with_equal_head_dims(self.fn, query, key, value, kwargs)
    return self.fn(query, key, value, *args, **kwargs)


def call_with_equal_head_dims(fn, query, key, value, kwargs: dict):
  """`fn(query, key, value, **kwargs)` for a kernel that needs equal query and value head
  dims, on a value of another head_dim (MLA's v_head_dim): zero columns pad the narrower side
  (the value; or the query and key, with the scale of the query's own head_dim kept), which
  changes no score and no output column, and the output is cut back to value's head_dim."""
  d, dv = query.shape[-1], value.shape[-1]
  if d == dv:
    return fn(query, key, value, **kwargs)
  if dv < d:
    value = jnp.pad(value, [(0, 0)] * 3 + [(0, d - dv)])
  else:
    kwargs = {**kwargs, "scale": d ** -0.5 if kwargs.get("scale") is None else kwargs["scale"]}
    widen = lambda x: jnp.pad(x, [(0, 0)] * 3 + [(0, dv - d)])
    query, key = widen(query), widen(key)
  out = fn(query, key, value, **kwargs)
  if isinstance(out, tuple):  # (out, weights)
    return (out[0][..., :dv], *out[1:])
  return out[..., :dv]


_KERNELS: dict[str, Kernel] = {}


def register(name: str, fn: Callable, description: str = "", *, computes: str = "softmax",
             decoding: str | None = "kv_cache",
             platforms: tuple[str, ...] = ("cpu", "gpu", "tpu"),
             equal_head_dims: bool = False) -> Kernel:
  """Adds a kernel `fn(query, key, value, **kwargs)` under `name`; returns its entry."""
  if name in _KERNELS:
    raise ValueError(f"an attention kernel named {name!r} is already registered.")
  if computes not in COMPUTES:
    raise ValueError(f"`computes` must be one of {COMPUTES}, got {computes!r}.")
  if decoding is not None and decoding not in DECODING:
    raise ValueError(f"`decoding` must be one of {DECODING} or None, got {decoding!r}.")
  _KERNELS[name] = Kernel(name, fn, description or (fn.__doc__ or "").strip().split("\n")[0],
                          computes, decoding, tuple(platforms), equal_head_dims)
  return _KERNELS[name]


def names() -> list[str]:
  """Names of all registered kernels."""
  return sorted(_KERNELS)


def decoders() -> list[str]:
  """Names of the registered kernels a decoder can run one token at a time."""
  return [name for name in names() if _KERNELS[name].decoding is not None]


def supporting(*arguments: str) -> list[str]:
  """Names of the registered kernels that take all of `arguments`."""
  return [name for name in names() if all(_KERNELS[name].supports(a) for a in arguments)]


def _parse_option(kernel: Kernel, option: str) -> tuple[str, object]:
  name, sep, text = option.partition("=")
  name = name.strip()
  if not sep or name not in kernel.arguments:
    options = sorted(kernel.arguments - {"query", "key", "value"})
    raise ValueError(f"bad option {option!r} for kernel {kernel.name!r}: write name=value "
                     f"with name one of {', '.join(options)}.")
  text = text.strip()
  if text.lower() in ("true", "false"):
    return name, text.lower() == "true"
  for number in (int, float):
    try:
      return name, number(text)
    except ValueError:
      pass
  default = inspect.signature(kernel.fn).parameters[name].default
  if not isinstance(default, str):
    raise ValueError(f"option {option!r} of kernel {kernel.name!r} must be a number or "
                     "true/false.")
  return name, text


def get(name: str | Callable) -> Kernel:
  """The kernel registered as `name` (a callable is wrapped as is).

  Options may follow the name, bound as keyword arguments: "splash:block_q=256,block_kv=512"
  or "pallas_gpu:interpret=true", so a config's `model.kernel` can set them.
  """
  if callable(name) and not isinstance(name, str):
    return name if isinstance(name, Kernel) else Kernel(getattr(name, "__name__", "custom"),
                                                        name, "user-supplied kernel")
  base, _, options = name.partition(":")
  if base not in _KERNELS:
    raise ValueError(f"unknown attention kernel {base!r}; valid names: {', '.join(names())}.")
  kernel = _KERNELS[base]
  backend = jax.default_backend()
  if backend not in kernel.platforms and not kernel.supports("interpret"):
    raise ValueError(f"kernel {base!r} runs on {', '.join(kernel.platforms)} only, but JAX's "
                     f"backend is {backend!r}; valid here: "
                     f"{', '.join(n for n in names() if backend in _KERNELS[n].platforms)}.")
  if not options:
    return kernel
  bound = dict(_parse_option(kernel, option) for option in options.split(","))
  return dataclasses.replace(kernel, fn=functools.partial(kernel.fn, **bound))


def _cudnn_takes(query, key, value) -> bool:
  """cuDNN's flash attention: Ampere or newer (compute capability 8.0), float16/bfloat16,
  head dims (the wider of query's and value's, to which the registry pads) a multiple of 8, at
  most 128 (256 from Hopper, 9.0, on)."""
  d = max(query.shape[-1], value.shape[-1])
  capability = float(getattr(jax.devices()[0], "compute_capability", None) or 0)
  return (capability >= 8.0 and jnp.result_type(query) in (jnp.float16, jnp.bfloat16)
          and d % 8 == 0 and d <= (256 if capability >= 9.0 else 128))


def choose(query, key, value=None, *, bias=None, mask=None, causal=False, kv_lengths=None,
           segment_ids=None, local_window=None, logits_soft_cap=None, sinks=None,
           dropout_rate=0.0, deterministic=False, return_weights=False) -> str:
  """The name of the fastest correct kernel for these arguments on this platform.

  Under a mesh whose `sequence` axis is larger than 1 (context parallelism): `ring` for
  self-attention without a dense mask, lengths or windows. Otherwise, TPU: `splash` (`xla`
  for a dense mask or fewer than 128 queries); GPU: `cudnn` (half
  precision, Ampere on), else `pallas_gpu` (self-attention without lengths, windows or a
  dense mask; also first for packed segments, which cuDNN takes only as a dense mask), else
  `xla`; CPU: `flash` from AUTO_FLASH_MIN_SCORES scores per head, else `dot_product`.
  Bias, attention dropout and returned weights always take `dot_product`. Soft-capped logits
  and learned sinks (which jax.nn, cuDNN and Pallas-GPU cannot take) go to `ring` or `splash`
  as above, else to `flash` / `dot_product` by the CPU's rule, on any platform.
  docs/kernels.md's table states the same rule.
  """
  value = key if value is None else value
  if bias is not None or return_weights or (dropout_rate > 0 and not deterministic):
    return "dot_product"
  backend = jax.default_backend()
  vendor_takes = logits_soft_cap is None and sinks is None  # xla, cudnn and pallas_gpu
  q_len, kv_len = query.shape[1], key.shape[1]
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.shape.get(RING_AXIS, 1) > 1 and q_len == kv_len and mask is None
      and kv_lengths is None and local_window is None
      and not isinstance(segment_ids, (tuple, list))):
    return "ring"
  if backend == "tpu" and mask is None and q_len >= SPLASH_MIN_Q_LEN:
    return "splash"
  if backend == "tpu" and vendor_takes:  # splash pads queries to 128-row blocks
    return "xla"
  if backend == "gpu" and vendor_takes:
    self_attention = q_len == kv_len and not isinstance(segment_ids, (tuple, list))
    pallas_takes = (mask is None and kv_lengths is None and local_window is None
                    and self_attention)
    if segment_ids is not None and pallas_takes:  # cuDNN would need a dense segment mask
      return "pallas_gpu"
    if _cudnn_takes(query, key, value):
      return "cudnn"
    return "pallas_gpu" if pallas_takes else "xla"
  if q_len * kv_len >= AUTO_FLASH_MIN_SCORES:
    return "flash"
  return "dot_product"


def auto_attention(query, key, value, *, bias=None, mask=None, causal=False, kv_lengths=None,
                   segment_ids=None, local_window=None, scale=None, logits_soft_cap=None,
                   sinks=None, dropout_rate=0.0, dropout_rng=None, deterministic=False,
                   return_weights=False):
  """Dispatches to `choose(...)`'s kernel; arguments as `dot_product_attention`."""
  _checks.check_qkv(query, key, value)
  kwargs = dict(bias=bias, mask=mask, causal=causal, kv_lengths=kv_lengths,
                segment_ids=segment_ids, local_window=local_window,
                logits_soft_cap=logits_soft_cap, sinks=sinks, dropout_rate=dropout_rate,
                deterministic=deterministic, return_weights=return_weights)
  name = choose(query, key, value, **kwargs)
  kwargs.update(scale=scale, dropout_rng=dropout_rng)
  kernel = _KERNELS[name]
  # Pass what the kernel takes; choose() guarantees the rest is unset.
  return kernel(query, key, value, **{k: v for k, v in kwargs.items()
                                      if k in kernel.arguments})


register("dot_product", dot_product_attention)
register("flash", flash_attention)
register("additive", additive_attention, computes="additive")
register("relative", relative_attention, computes="relative")
register("xla", xla_attention, equal_head_dims=True)
register("cudnn", cudnn_attention, platforms=("gpu",), equal_head_dims=True)
register("splash", splash_attention, platforms=("tpu",), equal_head_dims=True)
register("pallas_gpu", pallas_gpu_attention, platforms=("gpu",), equal_head_dims=True)
register("ring", ring_attention, decoding=None)
register("auto", auto_attention)
register("linear", linear_attention, computes="linear", decoding="state")
register("retention", retention_attention, computes="retention", decoding="state")
register("performer", performer_attention, computes="softmax_estimate", decoding="state")
register("sliding_window", sliding_window_attention, decoding="window")
