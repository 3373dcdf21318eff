"""Property-based checks: random shapes and masks, flash and dot_product vs numpy."""

import functools

import numpy as np
import jax
import jax.numpy as jnp
from hypothesis import given, settings, strategies as st

from attention_jax import kernels
from tests.kernels import reference


@st.composite
def attention_problems(draw):
  batch = draw(st.integers(1, 2))
  q_len, kv_len = draw(st.integers(1, 40)), draw(st.integers(1, 40))
  kv_heads = draw(st.sampled_from([1, 2]))
  heads = kv_heads * draw(st.sampled_from([1, 2]))
  causal = draw(st.booleans())
  window = draw(st.one_of(st.none(), st.integers(0, 8), st.tuples(st.integers(0, 8),
                                                                  st.integers(0, 8))))
  lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, kv_len), min_size=batch,
                                               max_size=batch)))
  block_q, block_k = draw(st.sampled_from([4, 8, 16])), draw(st.sampled_from([4, 8, 16]))
  sink_tokens = draw(st.integers(0, 6))
  seed = draw(st.integers(0, 2 ** 16))
  return (batch, q_len, kv_len, heads, kv_heads, causal, window, lengths, block_q, block_k,
          sink_tokens, seed)


@settings(max_examples=6, deadline=None)  # each example compiles; CI time is bounded
@given(attention_problems())
def test_flash_and_dense_match_reference_on_random_problems(problem):
  """flash (with first-token sinks beside any window) and dot_product against numpy."""
  b, tq, tk, h, kh, causal, window, lengths, bq, bk, sink_tokens, seed = problem
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.standard_normal((b, tq, h, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, tk, kh, 8)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, tk, kh, 8)), jnp.float32)
  kwargs = dict(causal=causal, local_window=window,
                kv_lengths=None if lengths is None else jnp.asarray(lengths))
  mask = reference.mask_reference(b, tq, tk, causal=causal, local_window=window,
                                  kv_lengths=lengths)
  want, _ = reference.attention_reference(q, k, v, mask=mask)
  np.testing.assert_allclose(kernels.dot_product_attention(q, k, v, **kwargs), want, atol=2e-6)
  mask = reference.mask_reference(b, tq, tk, causal=causal, local_window=window,
                                  kv_lengths=lengths, sink_tokens=sink_tokens)
  want, _ = reference.attention_reference(q, k, v, mask=mask)
  flash = functools.partial(kernels.flash_attention, block_q=bq, block_k=bk,
                            sink_tokens=sink_tokens, **kwargs)
  np.testing.assert_allclose(flash(q, k, v), want, atol=2e-6)
  d_out = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
  dq, dk, dv = jax.grad(lambda *a: jnp.sum(flash(*a) * d_out), (0, 1, 2))(q, k, v)
  want_grads = reference.attention_reference_grads(q, k, v, d_out, mask=mask)
  for got, exp in zip((dq, dk, dv), want_grads):
    np.testing.assert_allclose(got, exp, atol=2e-5, rtol=1e-5)
