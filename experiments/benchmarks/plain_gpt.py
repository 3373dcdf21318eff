"""The training-step benchmark's JAX twin: our quickstart GPT as a few plain jax.numpy
functions (one fused query/key/value matrix, attention as two einsums, no Flax), so that the
benchmark separates what our layers and trainer cost from what XLA makes of the model.
`tests/test_benchmark_smoke.py` checks that it computes our GPT's logits from the same
weights."""

from __future__ import annotations


def plain_gpt(shape: dict):
  """(init(key) -> params, forward(params, tokens [b, t]) -> logits) in plain jax.numpy, the
  torch twin's layout (fused qkv, pre-LN, learned positions, tied output embedding)."""
  import jax
  import jax.numpy as jnp

  width, heads, mlp_dim, eps = shape["width"], shape["heads"], shape["mlp_dim"], shape["ln_eps"]

  def init(key):
    keys = iter(jax.random.split(key, 2 + 4 * shape["depth"]))
    normal = lambda *s: 0.02 * jax.random.normal(next(keys), s)
    norm = lambda: (jnp.ones(width), jnp.zeros(width))
    dense = lambda n_in, n_out: (normal(n_in, n_out), jnp.zeros(n_out))
    blocks = [dict(attention_norm=norm(), qkv=dense(width, 3 * width), out=dense(width, width),
                   mlp_norm=norm(), fc1=dense(width, mlp_dim), fc2=dense(mlp_dim, width))
              for _ in range(shape["depth"])]
    return dict(token=normal(shape["vocab_size"], width), position=normal(shape["seq_len"], width),
                blocks=blocks, final_norm=norm())

  def layer_norm(x, scale_bias):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale_bias[0] + scale_bias[1]

  def dense(x, kernel_bias):
    return x @ kernel_bias[0] + kernel_bias[1]

  def attention(q, k, v):  # [b, t, heads, head_dim] each
    t = q.shape[1]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, -1e30)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)

  def forward(params, tokens):
    b, t = tokens.shape
    x = params["token"][tokens] + params["position"][:t]
    for block in params["blocks"]:
      qkv = dense(layer_norm(x, block["attention_norm"]), block["qkv"])
      q, k, v = jnp.split(qkv.reshape(b, t, 3 * heads, -1), 3, axis=2)
      x = x + dense(attention(q, k, v).reshape(b, t, width), block["out"])
      hidden = jax.nn.gelu(dense(layer_norm(x, block["mlp_norm"]), block["fc1"]), approximate=True)
      x = x + dense(hidden, block["fc2"])
    return layer_norm(x, params["final_norm"]) @ params["token"].T

  return init, forward
