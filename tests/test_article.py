"""The seed article's examples, run in our API (scale=1.0: the article does not scale)."""

import numpy as np
import jax
import jax.numpy as jnp

from attention_jax import kernels


def article_self_attention(params, inputs):
  """The article's `SelfAttention.forward`: Q/K/V linear maps, softmax(Q·Kᵀ), weighted sum."""
  q, k, v = (inputs @ params[f"w_{n}"] + params[f"b_{n}"] for n in "qkv")
  as_one_head = lambda x: x[:, :, None, :]  # [batch, length, 1 head, embed_dim]
  out = kernels.dot_product_attention(as_one_head(q), as_one_head(k), as_one_head(v),
                                      scale=1.0)
  return out[:, :, 0, :]


def test_self_attention_module_example_shape_and_values():
  embed_dim = 128
  keys = jax.random.split(jax.random.key(0), 7)
  params = {}
  for i, n in enumerate("qkv"):
    params[f"w_{n}"] = jax.random.normal(keys[i], (embed_dim, embed_dim)) / np.sqrt(embed_dim)
    params[f"b_{n}"] = jax.random.normal(keys[3 + i], (embed_dim,)) * 0.1
  input_sequence = jax.random.normal(keys[6], (16, 10, embed_dim))
  output = article_self_attention(params, input_sequence)
  assert output.shape == (16, 10, embed_dim)  # the article prints torch.Size([16, 10, 128])

  x = np.asarray(input_sequence, np.float64)
  q, k, v = (x @ np.asarray(params[f"w_{n}"]) + np.asarray(params[f"b_{n}"]) for n in "qkv")
  scores = q @ k.transpose(0, 2, 1)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  np.testing.assert_allclose(output, weights @ v, atol=1e-4)


def test_one_hot_worked_example_wo_ai_biancheng():
  """我 / 爱 / 编程 as one-hot e1, e2, e3: the article's score table and embeddings."""
  e = jnp.eye(3)[None, :, None, :]  # [batch 1, 3 tokens, 1 head, dim 3]
  scores = kernels.attention_scores(e, e, scale=1.0)[0, 0]
  np.testing.assert_array_equal(scores, np.eye(3))  # Score(e_i, e_j) = e_iᵀe_j = δ_ij

  # The article sums raw scores: Contextual(e_i) = Σ_j Score(e_i, e_j) e_j = e_i.
  contextual_raw = scores @ jnp.eye(3)
  np.testing.assert_array_equal(contextual_raw, np.eye(3))

  # With softmax weights, as attention actually uses: each token keeps e/(e+2) of itself and
  # mixes in 1/(e+2) of each other token.
  out, weights = kernels.dot_product_attention(e, e, e, scale=1.0, return_weights=True)
  own, other = np.e / (np.e + 2), 1 / (np.e + 2)
  expected = np.full((3, 3), other) + np.eye(3) * (own - other)
  np.testing.assert_allclose(weights[0, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(out[0, :, 0], expected, rtol=1e-6)
  np.testing.assert_allclose(expected[0], [0.5761, 0.2119, 0.2119], atol=1e-4)
