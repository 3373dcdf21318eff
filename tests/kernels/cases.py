"""Shared shapes and mask combinations for the kernel tests."""

import dataclasses

import numpy as np
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  batch: int
  q_len: int
  kv_len: int
  heads: int
  kv_heads: int
  head_dim: int
  causal: bool = False
  kv_lengths: tuple | None = None
  local_window: object = None
  segments: int = 0  # number of packed segments per row (0 = none)
  dense_mask: bool = False

  def __str__(self):
    return self.name


CASES = [
    Case("single_token", 1, 1, 1, 1, 1, 8),
    Case("self_7", 2, 7, 7, 2, 2, 8),
    Case("decode_1_of_257_causal_mqa", 2, 1, 257, 4, 1, 16, causal=True),
    Case("causal_257_gqa", 1, 257, 257, 4, 2, 16, causal=True),
    Case("causal_q_longer_than_kv", 1, 9, 5, 2, 2, 8, causal=True),
    Case("cross_100x1000_lengths", 2, 100, 1000, 2, 2, 16, kv_lengths=(1000, 333)),
    Case("zero_length_row", 2, 33, 40, 2, 1, 8, kv_lengths=(0, 17)),
    Case("causal_window_257", 2, 257, 257, 2, 1, 8, causal=True, local_window=20),
    Case("window_left_right_130x200", 1, 130, 200, 2, 2, 8, local_window=(10, 5)),
    Case("segments_96", 2, 96, 96, 2, 2, 8, segments=3),
    Case("causal_segments_lengths", 2, 70, 70, 4, 2, 8, causal=True, kv_lengths=(70, 50),
         segments=2),
    Case("dense_mask_33x65", 2, 33, 65, 4, 2, 8, dense_mask=True),
]


def make_inputs(case: Case, dtype=jnp.float32, seed=0):
  """Random q, k, v, an output cotangent and the structured/dense mask arguments."""
  rng = np.random.default_rng(seed)
  b, h, kh, d = case.batch, case.heads, case.kv_heads, case.head_dim
  q = rng.standard_normal((b, case.q_len, h, d))
  k = rng.standard_normal((b, case.kv_len, kh, d))
  v = rng.standard_normal((b, case.kv_len, kh, d))
  d_out = rng.standard_normal((b, case.q_len, h, d))
  kwargs = dict(causal=case.causal, local_window=case.local_window)
  if case.kv_lengths is not None:
    kwargs["kv_lengths"] = jnp.asarray(case.kv_lengths)
  if case.segments:
    ids = np.sort(rng.integers(0, case.segments, (b, case.q_len)), axis=1)
    kwargs["segment_ids"] = jnp.asarray(ids)
  if case.dense_mask:
    mask = rng.random((b, 1, case.q_len, case.kv_len)) < 0.7
    mask[:, :, 3] = False  # a fully masked row
    kwargs["mask"] = jnp.asarray(mask)
  cast = lambda x: jnp.asarray(x, dtype)
  return cast(q), cast(k), cast(v), cast(d_out), kwargs
