"""Positional helpers that act on queries, keys or scores: sinusoids, rotary, ALiBi."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp


def _check_even(dim: int, name: str):
  if dim % 2:
    raise ValueError(f"`{name}` must be even, got {dim}.")


def sinusoidal_embedding(positions, dim: int, base: float = 10000.0):
  """Sinusoidal encodings [sin(p·f), cos(p·f)] (Vaswani et al.; Transformer-XL's layout).

  Args:
    positions: float or int array [...] of positions (or relative distances).
    dim: even embedding width.

  Returns:
    [..., dim] float32, sines in the first half and cosines in the second.
  """
  _check_even(dim, "dim")
  inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def relative_distances(kv_len: int):
  """Distances kv_len-1, ..., 1, 0: the row order `relative_attention` expects."""
  return jnp.arange(kv_len - 1, -1, -1)


ROPE_SCALINGS = ("linear", "llama3", "yarn")


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
  """YaRN's attention temperature 0.1·mscale·ln(factor) + 1 (1 for factor <= 1)."""
  return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Stretching rotary frequencies for contexts longer than pre-training (Hugging Face's
  `rope_scaling` / `rope_parameters`).

  "linear" divides every frequency by `factor` (position interpolation). "llama3" divides
  only the low frequencies (wavelengths above original_max_len / low_freq_factor), keeps the
  high ones (below original_max_len / high_freq_factor) and blends in between (Llama 3.1).
  "yarn" (Peng et al. 2023; Qwen, DeepSeek) keeps the dimensions that turn more than
  `beta_fast` times over original_max_len, divides those that turn fewer than `beta_slow`
  times by `factor`, ramps linearly between (the bounds rounded out with `truncate`), and
  multiplies cos and sin by `attention_factor` (default yarn_mscale(factor, mscale) /
  yarn_mscale(factor, mscale_all_dim) when both are set, else yarn_mscale(factor)).
  """
  kind: str  # one of ROPE_SCALINGS
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_len: int = 8192
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  mscale: float | None = None
  mscale_all_dim: float | None = None
  attention_factor: float | None = None
  truncate: bool = True

  def __post_init__(self):
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(f"rope scaling kind must be one of {ROPE_SCALINGS}, got {self.kind!r}.")
    if self.factor <= 0 or (self.kind == "llama3"
                            and not 0 < self.low_freq_factor < self.high_freq_factor):
      raise ValueError(f"bad rope scaling {self}: factor > 0 and, for llama3, "
                       "0 < low_freq_factor < high_freq_factor.")
    if self.kind == "yarn" and not (self.beta_fast > 0 and self.beta_slow > 0
                                    and self.original_max_len > 0):
      raise ValueError(f"bad yarn rope scaling {self}: beta_fast, beta_slow and "
                       "original_max_len must be positive.")

  @property
  def rotary_scale(self) -> float:
    """What cos and sin are multiplied by (each score by its square): YaRN's attention
    factor, else 1."""
    if self.kind != "yarn":
      return 1.0
    if self.attention_factor is not None:
      return float(self.attention_factor)
    if self.mscale and self.mscale_all_dim:
      return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor,
                                                                 self.mscale_all_dim)
    return yarn_mscale(self.factor)


def _yarn_frequencies(inv_freq, head_dim: int, base: float, scaling: RopeScaling):
  """YaRN's blend of the original (extrapolated) and `factor`-divided frequencies."""
  def dimension_turning(rotations):  # the dimension that turns `rotations` times
    return (head_dim * math.log(scaling.original_max_len / (rotations * 2 * math.pi))
            / (2 * math.log(base)))
  low, high = dimension_turning(scaling.beta_fast), dimension_turning(scaling.beta_slow)
  if scaling.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, head_dim - 1)
  if low == high:
    high += 0.001
  ramp = jnp.clip((jnp.arange(head_dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
  return inv_freq / scaling.factor * ramp + inv_freq * (1 - ramp)


def rotary_frequencies(head_dim: int, base: float = 10000.0,
                       scaling: RopeScaling | None = None):
  """Rotary inverse frequencies [head_dim / 2], float32, with an optional `scaling`."""
  _check_even(head_dim, "head_dim")
  inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None:
    return inv_freq
  if scaling.kind == "linear":
    return inv_freq / scaling.factor
  if scaling.kind == "yarn":
    return _yarn_frequencies(inv_freq, head_dim, base, scaling)
  wavelength = 2 * math.pi / inv_freq
  long_wave = scaling.original_max_len / scaling.low_freq_factor
  short_wave = scaling.original_max_len / scaling.high_freq_factor
  smooth = ((scaling.original_max_len / wavelength - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
  return jnp.where(wavelength > long_wave, inv_freq / scaling.factor,
                   jnp.where(wavelength < short_wave, inv_freq, blended))


def apply_rotary(x, positions, base: float = 10000.0, scaling: RopeScaling | None = None):
  """Rotary position embedding (Su et al. 2021; rotate-half layout, as Hugging Face Llama)
  of queries or keys.

  Args:
    x: [batch, length, heads, head_dim] with even head_dim.
    positions: int [length] or [batch, length] absolute positions (with a KV cache: the
      cache index of each new token).
    base, scaling: the frequencies (`rotary_frequencies`); YaRN's also scale cos and sin.

  Returns:
    x rotated so that q_i·k_j depends on positions only through i - j; same shape and dtype.
  """
  inv_freq = rotary_frequencies(x.shape[-1], base, scaling)
  positions = jnp.asarray(positions, jnp.float32)
  if positions.ndim == 1:
    positions = positions[None]
  if positions.shape[-1] != x.shape[1]:
    raise ValueError(f"`positions` must have length {x.shape[1]} (x's length axis), got "
                     f"shape {positions.shape}.")
  angles = positions[:, :, None, None] * inv_freq  # [batch|1, length, 1, d/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if scaling is not None and scaling.rotary_scale != 1.0:
    cos, sin = cos * scaling.rotary_scale, sin * scaling.rotary_scale
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int):
  """ALiBi head slopes (Press et al. 2022), including the non-power-of-two rule. [heads]."""
  def power_of_two_slopes(n):
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start * start ** i for i in range(n)]

  closest = 2 ** int(math.floor(math.log2(num_heads)))
  slopes = power_of_two_slopes(closest)
  if closest < num_heads:
    slopes += power_of_two_slopes(2 * closest)[0::2][:num_heads - closest]
  return jnp.asarray(slopes, jnp.float32)


def alibi_bias(num_heads: int, q_len: int, kv_len: int | None = None, q_offset=None):
  """ALiBi additive bias -slope_h · |(i + q_offset) - j|, shape [1, heads, q_len, kv_len].

  `q_offset` (the position of the first query; may be traced, e.g. a KV-cache index) defaults
  to kv_len - q_len, the bottom-right alignment of the causal mask. On the causal part this
  is exactly the paper's bias.
  """
  kv_len = q_len if kv_len is None else kv_len
  q_offset = kv_len - q_len if q_offset is None else q_offset
  distance = jnp.abs(jnp.arange(q_len)[:, None] + q_offset - jnp.arange(kv_len)[None])
  return -alibi_slopes(num_heads)[None, :, None, None] * distance[None, None]
