"""What the Pallas-backed kernels (`splash`, `pallas_gpu`) share: the platform check,
block sizes chosen per shape, and padding to whole blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PLATFORM_NAMES = {"tpu": "a TPU", "gpu": "an NVIDIA GPU"}
# Segment id of block padding: never equal to a real id, so padding is never attended.
PAD_SEGMENT = int(jnp.iinfo(jnp.int32).min)


def check_platform(kernel: str, platform: str, interpret: bool):
  """Fails clearly when a Pallas kernel would be compiled for the wrong platform."""
  backend = jax.default_backend()
  if not interpret and backend != platform:
    raise ValueError(
        f"kernel {kernel!r} is a Pallas kernel for {PLATFORM_NAMES[platform]}, but JAX's "
        f"backend is {backend!r}. Use kernel 'auto' (the best kernel for this platform), or "
        f"run it in Pallas interpret mode (slow; for tests): {kernel}_attention(..., "
        f"interpret=True), or the kernel name '{kernel}:interpret=true' in a config.")


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def block_size(length: int, preferred: int, granule: int) -> int:
  """The block for a sequence of `length`: `preferred`, or the whole (rounded-up) sequence
  when that is shorter, so short sequences are not padded to a long block."""
  return min(preferred, round_up(max(length, 1), granule))


def pad_axis(x, axis: int, length: int, value=0):
  """Pads `x` along `axis` at the end up to `length`."""
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)
