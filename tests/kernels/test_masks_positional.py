"""Mask and positional helpers."""

import numpy as np
import pytest
import jax.numpy as jnp

from attention_jax import kernels
from attention_jax.kernels import masks, positional
from tests.kernels import reference


def test_causal_mask_is_bottom_right_aligned():
  np.testing.assert_array_equal(masks.causal_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(masks.causal_mask(3), np.tril(np.ones((3, 3), bool)))
  np.testing.assert_array_equal(masks.causal_mask(3, 2), [[0, 0], [1, 0], [1, 1]])


@pytest.mark.parametrize("window,causal", [(2, False), ((1, 3), False), (2, True), (0, True)])
def test_local_window_mask_matches_reference(window, causal):
  got = masks.local_window_mask(6, 9, window, causal=causal)
  want = reference.mask_reference(1, 6, 9, causal=causal, local_window=window)[0, 0]
  np.testing.assert_array_equal(got, want)


def test_padding_and_segment_masks_match_reference():
  lengths = np.array([3, 0, 5])
  np.testing.assert_array_equal(masks.padding_mask(jnp.asarray(lengths), 5),
                                reference.mask_reference(3, 1, 5, kv_lengths=lengths))
  ids = np.array([[1, 1, 2, 2, 0], [3, 3, 3, 3, 3]])
  np.testing.assert_array_equal(masks.segment_mask(jnp.asarray(ids)),
                                reference.mask_reference(2, 5, 5, segment_ids=ids))
  q_ids, kv_ids = np.array([[2, 2]]), np.array([[1, 2, 2, 2]])
  np.testing.assert_array_equal(masks.segment_mask(q_ids, kv_ids),
                                reference.mask_reference(1, 2, 4, segment_ids=(q_ids, kv_ids)))


def test_combine_masks_ands_and_ignores_none():
  a = jnp.array([True, True, False])
  b = jnp.array([True, False, True])
  np.testing.assert_array_equal(masks.combine_masks(a, None, b), [True, False, False])
  assert masks.combine_masks(None, None) is None


def test_rotary_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((1, 1, 2, 8)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((1, 1, 2, 8)), jnp.float32)

  def score(i, j):
    qi = positional.apply_rotary(q, jnp.array([i]))
    kj = positional.apply_rotary(k, jnp.array([j]))
    return np.asarray(jnp.sum(qi * kj, -1))

  np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
  assert np.abs(score(7, 3) - score(3, 7)).max() > 1e-3
  rotated = positional.apply_rotary(q, jnp.array([5]))
  np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q), rtol=1e-6)
  np.testing.assert_allclose(positional.apply_rotary(q, jnp.array([0])), q)


def test_alibi_slopes_follow_the_paper():
  np.testing.assert_allclose(positional.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
  twelve = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in (0, 1, 2, 3)]
  np.testing.assert_allclose(positional.alibi_slopes(12), twelve, rtol=1e-6)


def test_alibi_bias_on_causal_part_and_as_kernel_bias():
  bias = positional.alibi_bias(2, 3, 5)
  assert bias.shape == (1, 2, 3, 5)
  np.testing.assert_allclose(bias[0, 0, 2], -2.0 ** -4 * np.array([4, 3, 2, 1, 0]))  # 2^(-8/2)
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.standard_normal((1, s, 2, 4)), jnp.float32) for s in (3, 5, 5))
  want, _ = reference.attention_reference(q, k, v, bias=bias,
                                          mask=reference.mask_reference(1, 3, 5, causal=True))
  got = kernels.dot_product_attention(q, k, v, bias=bias, causal=True)
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_sinusoidal_embedding_values():
  emb = positional.sinusoidal_embedding(jnp.array([0.0, 1.0]), 4)
  np.testing.assert_allclose(emb[0], [0, 0, 1, 1])
  np.testing.assert_allclose(emb[1], [np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)],
                             rtol=1e-6)
  np.testing.assert_array_equal(positional.relative_distances(4), [3, 2, 1, 0])
