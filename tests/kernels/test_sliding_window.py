"""sliding_window: softmax over a window plus first-token attention sinks (`sink_tokens`), on
the flash kernel's block skipping, against the numpy reference with the same mask; forward and
gradients."""

import dataclasses
import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from attention_jax import kernels
from tests.kernels import reference
from tests.kernels.cases import CASES, make_inputs
from tests.kernels.test_softmax_kernels import check_bfloat16

SINK_CASES = [  # (case name, sink_tokens, block_q, block_k)
    ("causal_window_257", 4, 32, 64),
    ("causal_window_257", 40, 16, 16),
    ("window_left_right_130x200", 3, 32, 32),
]


def with_window(case, window):
  return dataclasses.replace(case, local_window=window) if window else case


@pytest.mark.parametrize("spec", SINK_CASES + [("causal_segments_lengths", 2, 16, 16)],
                         ids=str)
def test_forward_and_gradients_with_sinks(spec):
  name, sink_tokens, bq, bk = spec
  case = with_window(next(c for c in CASES if c.name == name),
                     None if name != "causal_segments_lengths" else 9)
  q, k, v, d_out, kwargs = make_inputs(case)
  seg = kwargs.get("segment_ids")
  allowed = reference.mask_reference(
      case.batch, case.q_len, case.kv_len, causal=case.causal, kv_lengths=case.kv_lengths,
      local_window=case.local_window, sink_tokens=sink_tokens,
      segment_ids=None if seg is None else np.asarray(seg))
  fn = jax.jit(functools.partial(kernels.get("sliding_window"), sink_tokens=sink_tokens, block_q=bq,
                                 block_k=bk, **kwargs))
  want, _ = reference.attention_reference(q, k, v, mask=allowed)
  np.testing.assert_allclose(fn(q, k, v), want, atol=2e-6)
  grads = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * d_out), (0, 1, 2))(q, k, v)
  for got, exp in zip(grads, reference.attention_reference_grads(q, k, v, d_out,
                                                                 mask=allowed)[:3]):
    np.testing.assert_allclose(got, exp, atol=2e-5, rtol=1e-5)


def test_bfloat16():
  case = next(c for c in CASES if c.name == "causal_window_257")
  q, k, v, _, kwargs = make_inputs(case, jnp.bfloat16)
  out = kernels.sliding_window_attention(q, k, v, sink_tokens=0, block_q=32, block_k=64, **kwargs)
  assert out.dtype == jnp.bfloat16
  check_bfloat16(kernels.sliding_window_attention, case, sink_tokens=0, block_q=32, block_k=64)


def test_needs_a_window():
  q = jnp.ones((1, 4, 1, 8))
  with pytest.raises(ValueError, match="needs a `local_window`"):
    kernels.sliding_window_attention(q, q, q, local_window=None)
  with pytest.raises(ValueError, match="`sink_tokens` must be >= 0"):
    kernels.sliding_window_attention(q, q, q, sink_tokens=-1)
