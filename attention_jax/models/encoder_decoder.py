"""The original Transformer (Vaswani et al. 2017) for translation.

Post-LN encoder and decoder, sinusoidal positions, token embeddings scaled by sqrt(width) and
shared between source, target and the pre-softmax projection (one joint vocabulary).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import AttentionInputs, TextEmbeddings, TransformerBlock
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.transformer import run_blocks, scanned_blocks
from attention_jax.models.layouts import LayerGroups


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderDecoderConfig(TransformerConfig):
  """The base model of Vaswani et al.: `depth` encoder blocks and `decoder_depth` decoder
  blocks (default: as many), post-LN, ReLU, sinusoidal positions."""
  vocab_size: int = 37000
  max_len: int = 1024
  width: int = 512
  depth: int = 6
  decoder_depth: int | None = None
  num_heads: int = 8
  mlp_dim: int = 2048
  pre_ln: bool = False
  ln_eps: float = 1e-5
  activation: str = "relu"
  position: str = "sinusoidal"
  dropout_rate: float = 0.1


class EncoderDecoder(nn.Module):
  """(source [batch, src_len], target_in [batch, tgt_len]) -> logits [batch, tgt_len, vocab].

  `source_lengths` [batch] marks source padding (positions >= length). With `config.decode`
  the decoder's self-attention keeps a KV cache; see `generation.beam_search` /
  `greedy_decode`.
  """
  config: EncoderDecoderConfig

  def setup(self):
    c = self.config
    self.embed = TextEmbeddings(c.vocab_size, c.width, c.max_len, position="sinusoidal",
                                scale_tokens=True, dropout_rate=c.dropout_rate, dtype=c.dtype,
                                param_dtype=c.param_dtype)
    encoder = c.replace(decode=False)
    decoder = c.replace(depth=c.decoder_depth or c.depth)
    if c.scan_layers:  # "encoder_blocks", "decoder_blocks", stacked
      self.encoder_blocks = scanned_blocks(encoder)
      self.decoder_blocks = scanned_blocks(decoder, cross_attention=True)
    else:  # "encoder_blocks_0", ..., "decoder_blocks_0", ...
      self.encoder_blocks = [TransformerBlock(encoder) for _ in range(encoder.depth)]
      self.decoder_blocks = [TransformerBlock(decoder, cross_attention=True)
                             for _ in range(decoder.depth)]
    if c.decode:
      self.position_index = self.variable("cache", "position_index",
                                          lambda: jnp.array(0, jnp.int32))

  def encode(self, source, source_lengths=None, *, deterministic=True):
    """[batch, src_len] -> [batch, src_len, width]."""
    x = self.embed(source, deterministic=deterministic)
    return run_blocks(self.encoder_blocks, x, AttentionInputs(kv_lengths=source_lengths),
                      deterministic=deterministic)

  def decode_logits(self, target_in, encoded, source_lengths=None, *, deterministic=True):
    """Teacher-forced (or, with decode=True, cached incremental) decoder logits."""
    positions = None
    decode = self.config.decode
    if decode and not self.is_initializing():
      positions = self.position_index.value + jnp.arange(target_in.shape[1])[None]
      self.position_index.value = self.position_index.value + target_in.shape[1]
    y = self.embed(target_in, positions, deterministic=deterministic)
    y = run_blocks(self.decoder_blocks, y, AttentionInputs(causal=not decode),
                   encoded=encoded, encoded_inputs=AttentionInputs(kv_lengths=source_lengths),
                   deterministic=deterministic)
    return self.embed.attend(y).astype(jnp.float32)

  def __call__(self, source, target_in, source_lengths=None, *, deterministic=True):
    encoded = self.encode(source, source_lengths, deterministic=deterministic)
    return self.decode_logits(target_in, encoded, source_lengths, deterministic=deterministic)

  def example_inputs(self):
    tokens = jnp.zeros((1, min(8, self.config.max_len)), jnp.int32)
    return tokens, tokens

  def layer_groups(self) -> LayerGroups:
    c = self.config
    return LayerGroups.of(c, below=("embed",), prefixes=(
        ("encoder_blocks_", c.depth), ("decoder_blocks_", c.decoder_depth or c.depth)))
