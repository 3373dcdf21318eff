"""The original Transformer (Vaswani et al. 2017) for translation.

Post-LN encoder and decoder, sinusoidal positions, token embeddings scaled by sqrt(width) and
shared between source, target and the pre-softmax projection (one joint vocabulary).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import TextEmbeddings, TransformerBlock


class EncoderDecoder(nn.Module):
  """(source [batch, src_len], target_in [batch, tgt_len]) -> logits [batch, tgt_len, vocab].

  `source_lengths` [batch] marks source padding (positions >= length). With `decode=True` the
  decoder's self-attention keeps a KV cache; see `generation.beam_search` / `greedy_decode`.
  """
  vocab_size: int
  max_len: int = 1024
  width: int = 512
  encoder_depth: int = 6
  decoder_depth: int = 6
  num_heads: int = 8
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  ln_eps: float = 1e-5
  activation: str = "relu"
  kernel: str | Callable = "dot_product"
  remat: str = "none"  # per-block rematerialisation (layers.transformer.REMAT)
  scan_layers: bool = False  # not available here: GPT, Bert and ViT stack their blocks
  decode: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.scan_layers:
      raise ValueError("scan_layers is available for GPT, Bert and ViT; EncoderDecoder keeps its "
                       "blocks unrolled (set model.scan_layers=False).")
    self.embed = TextEmbeddings(self.vocab_size, self.width, self.max_len,
                                position="sinusoidal", scale_tokens=True,
                                dropout_rate=self.dropout_rate, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    block = lambda cross, decode: TransformerBlock(
        self.num_heads, self.mlp_dim, pre_ln=False, cross_attention=cross, kernel=self.kernel,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        ln_eps=self.ln_eps, activation=self.activation, decode=decode, remat=self.remat,
        dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder_blocks = [block(False, False) for _ in range(self.encoder_depth)]
    self.decoder_blocks = [block(True, self.decode) for _ in range(self.decoder_depth)]
    if self.decode:
      self.position_index = self.variable("cache", "position_index",
                                          lambda: jnp.array(0, jnp.int32))

  def encode(self, source, source_lengths=None, *, deterministic=True):
    """[batch, src_len] -> [batch, src_len, width]."""
    x = self.embed(source, deterministic=deterministic)
    for block in self.encoder_blocks:
      x = block(x, kv_lengths=source_lengths, deterministic=deterministic)
    return x

  def decode_logits(self, target_in, encoded, source_lengths=None, *, deterministic=True):
    """Teacher-forced (or, with decode=True, cached incremental) decoder logits."""
    positions = None
    if self.decode and not self.is_initializing():
      positions = self.position_index.value + jnp.arange(target_in.shape[1])[None]
      self.position_index.value = self.position_index.value + target_in.shape[1]
    y = self.embed(target_in, positions, deterministic=deterministic)
    for block in self.decoder_blocks:
      y = block(y, causal=not self.decode, encoded=encoded, encoded_lengths=source_lengths,
                deterministic=deterministic)
    return self.embed.attend(y).astype(jnp.float32)

  def __call__(self, source, target_in, source_lengths=None, *, deterministic=True):
    encoded = self.encode(source, source_lengths, deterministic=deterministic)
    return self.decode_logits(target_in, encoded, source_lengths, deterministic=deterministic)

  def example_inputs(self):
    tokens = jnp.zeros((1, min(8, self.max_len)), jnp.int32)
    return tokens, tokens
