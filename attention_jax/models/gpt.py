"""GPT: a causal decoder-only language model with tied input/output embeddings (GPT-2)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import AttentionInputs, TextEmbeddings
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.transformer import block_stack, norm_layer
from attention_jax.models.layouts import LayerGroups


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig(TransformerConfig):
  """GPT-2's choices: learned positions ("rotary" and "alibi" also work), pre-LN, tanh GELU."""
  position: str = "learned"
  ln_eps: float = 1e-5
  activation: str = "gelu_tanh"
  dropout_rate: float = 0.1


def decode_positions(module: nn.Module, length: int, positions):
  """With a KV cache, the positions of the next `length` tokens: `positions` when given
  (left-padded rows), else counted on from a 'cache' index."""
  index = module.variable("cache", "position_index", lambda: jnp.array(0, jnp.int32))
  if module.is_initializing():
    return positions
  if positions is None:
    positions = index.value + jnp.arange(length)[None]
  index.value = index.value + length
  return positions


class GPT(nn.Module):
  """tokens [batch, length] -> next-token logits [batch, length, vocab_size].

  Pre-LN blocks and a final LayerNorm, as GPT-2. With `config.decode` the attention layers
  keep a KV cache (see `generate`).
  """
  config: GPTConfig

  @nn.compact
  def __call__(self, tokens, *, positions=None, segment_ids=None, mask=None,
               deterministic=True):
    """tokens [batch, length]; for packed sequences, `segment_ids` [batch, length] keep the
    documents apart and `positions` [batch, length] restart at each document. `mask`
    (boolean, broadcast to [batch, heads, length, keys]) further limits attention."""
    c = self.config
    if c.decode:
      positions = decode_positions(self, tokens.shape[1], positions)
    embed = TextEmbeddings(c.vocab_size, c.width, c.max_len,
                           position="learned" if c.position == "learned" else "none",
                           dropout_rate=c.dropout_rate, dtype=c.dtype,
                           param_dtype=c.param_dtype, name="embed")
    x = embed(tokens, positions, deterministic=deterministic)
    # Rotary attention needs the positions; so does a decoding cache (a sliding window's
    # sink tokens are the first real tokens of each left-padded row).
    attend_positions = c.attention_position == "rotary" or c.decode
    inputs = AttentionInputs(mask=mask, segment_ids=segment_ids,
                             positions=positions if attend_positions else None,
                             causal=not c.decode)
    x = block_stack(x, c, inputs, deterministic=deterministic)
    x = norm_layer(c, "final_norm")(x)
    return embed.attend(x).astype(jnp.float32)

  def example_inputs(self):
    return (jnp.zeros((1, min(8, self.config.max_len)), jnp.int32),)

  def layer_groups(self) -> LayerGroups:
    return LayerGroups.of(self.config, below=("embed",), above=("final_norm",))
