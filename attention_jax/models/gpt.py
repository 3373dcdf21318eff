"""GPT: a causal decoder-only language model with tied input/output embeddings (GPT-2)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import TextEmbeddings
from attention_jax.layers.transformer import block_stack
from attention_jax.layers.lora import LoraSpec


class GPT(nn.Module):
  """tokens [batch, length] -> next-token logits [batch, length, vocab_size].

  Pre-LN blocks and a final LayerNorm, as GPT-2. `position` is "learned" (GPT-2), "rotary" or
  "alibi". With `decode=True` the attention layers keep a KV cache (see `generate`).
  """
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  position: str = "learned"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  ln_eps: float = 1e-5
  activation: str = "gelu_tanh"
  kernel: str | Callable = "dot_product"
  remat: str = "none"  # per-block rematerialisation (layers.transformer.REMAT)
  scan_layers: bool = False  # blocks under nn.scan, parameters stacked (models.layouts)
  lora: LoraSpec | None = None  # LoRA adapters (see attention_jax.layers.lora)
  decode: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, *, positions=None, segment_ids=None, deterministic=True):
    """tokens [batch, length]; for packed sequences, `segment_ids` [batch, length] keep the
    documents apart and `positions` [batch, length] restart at each document."""
    length = tokens.shape[1]
    if self.decode:
      index = self.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
      if not self.is_initializing():
        positions = index.value + jnp.arange(length)[None]
        index.value = index.value + length
    embed = TextEmbeddings(self.vocab_size, self.width, self.max_len,
                           position="learned" if self.position == "learned" else "none",
                           dropout_rate=self.dropout_rate, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="embed")
    x = embed(tokens, positions, deterministic=deterministic)
    options = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, num_kv_heads=self.num_kv_heads,
        pre_ln=True, kernel=self.kernel, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, ln_eps=self.ln_eps,
        activation=self.activation,
        position=self.position if self.position in ("rotary", "alibi") else "none",
        decode=self.decode, lora=self.lora, remat=self.remat, dtype=self.dtype,
        param_dtype=self.param_dtype)
    x = block_stack(x, self.depth, self.scan_layers, options, segment_ids=segment_ids,
                    causal=not self.decode, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="final_norm")(x)
    return embed.attend(x).astype(jnp.float32)

  def example_inputs(self):
    return (jnp.zeros((1, min(8, self.max_len)), jnp.int32),)
