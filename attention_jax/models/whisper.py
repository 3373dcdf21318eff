"""Whisper (Radford et al. 2022): speech recognition as an encoder-decoder transformer.

The encoder reads a log-mel spectrogram [batch, frames, n_mels] (`data.audio`): two 1-D
convolutions with GELU (the second with stride 2, halving the frames: 3000 -> 1500 for 30 s),
fixed sinusoidal positions (Whisper's: sines then cosines, not interleaved), pre-LN blocks and
a final LayerNorm. The decoder embeds tokens with learned positions and runs pre-LN blocks
with self-attention (causal) and cross-attention to the encoder, a final LayerNorm, and
logits through the token table (tied). Keys have no bias.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from attention_jax.layers import AttentionInputs, TextEmbeddings, TransformerBlock
from attention_jax.layers.attention import default_kernel_init
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.transformer import norm_layer, run_blocks, scanned_blocks
from attention_jax.models.layouts import LayerGroups


@dataclasses.dataclass(frozen=True, kw_only=True)
class WhisperConfig(TransformerConfig):
  """Whisper's choices: `depth` encoder and `decoder_depth` decoder blocks (default as
  many), pre-LN LayerNorm (eps 1e-5), exact GELU, keys without bias; n_mels input bins,
  max_source_positions encoder positions (after the stride-2 convolution), max_len decoder
  positions (448)."""
  vocab_size: int = 51865
  max_len: int = 448
  n_mels: int = 80
  max_source_positions: int = 1500
  decoder_depth: int | None = None
  pre_ln: bool = True
  ln_eps: float = 1e-5
  activation: str = "gelu"
  key_bias: bool | None = False


def whisper_sinusoids(length: int, width: int) -> np.ndarray:
  """float32 [length, width]: sin(t · 10000^(-i / (width/2 - 1))) for the first half of the
  channels, cos for the second (Whisper's encoder positions), computed in float64: the
  table Whisper's checkpoints hold was computed in float32 and is up to 1.1e-4 off at
  the late positions."""
  increment = np.log(10000.0) / (width // 2 - 1)
  scaled = np.arange(length)[:, None] * np.exp(-increment * np.arange(width // 2))[None]
  return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class Whisper(nn.Module):
  """(features [batch, frames, n_mels], decoder tokens [batch, length]) -> logits [batch,
  length, vocab]. frames <= 2 · max_source_positions (3000: 30 s); with `config.decode`
  the decoder keeps a KV cache (positions continue from the cache's index)."""
  config: WhisperConfig

  def setup(self):
    c = self.config
    conv = lambda name, stride: nn.Conv(c.width, (3,), strides=(stride,), padding=((1, 1),),
                                        dtype=c.dtype, param_dtype=c.param_dtype,
                                        kernel_init=default_kernel_init, name=name)
    self.conv1, self.conv2 = conv("conv1", 1), conv("conv2", 2)
    encoder = c.replace(decode=False)
    decoder = c.replace(depth=c.decoder_depth or c.depth)
    if c.scan_layers:  # "encoder_blocks", "decoder_blocks", stacked
      self.encoder_blocks = scanned_blocks(encoder)
      self.decoder_blocks = scanned_blocks(decoder, cross_attention=True)
    else:
      self.encoder_blocks = [TransformerBlock(encoder) for _ in range(encoder.depth)]
      self.decoder_blocks = [TransformerBlock(decoder, cross_attention=True)
                             for _ in range(decoder.depth)]
    self.encoder_dropout = nn.Dropout(c.dropout_rate)
    self.encoder_norm = norm_layer(c, "encoder_norm")
    self.embed = TextEmbeddings(c.vocab_size, c.width, c.max_len, position="learned",
                                dropout_rate=c.dropout_rate, dtype=c.dtype,
                                param_dtype=c.param_dtype)
    self.decoder_norm = norm_layer(c, "decoder_norm")
    if c.decode:
      self.position_index = self.variable("cache", "position_index",
                                          lambda: jnp.array(0, jnp.int32))

  @property
  def window_seconds(self) -> float:
    """The audio one encoder pass reads: 2 · max_source_positions frames of 10 ms (30 s)."""
    return 2 * self.config.max_source_positions / 100

  def encode(self, features, *, deterministic=True):
    """[batch, frames, n_mels] -> [batch, ceil(frames / 2), width]."""
    c = self.config
    if features.shape[-1] != c.n_mels:
      raise ValueError(f"features have {features.shape[-1]} mel bins; this model reads "
                       f"{c.n_mels} (data.audio.log_mel_spectrogram(..., n_mels={c.n_mels})).")
    if features.shape[-2] > 2 * c.max_source_positions:
      raise ValueError(f"{features.shape[-2]} frames exceed the encoder's "
                       f"{2 * c.max_source_positions} ({c.max_source_positions} positions "
                       "after the stride-2 convolution); cut the audio into 30 s windows.")
    gelu = lambda y: nn.gelu(y, approximate=False)
    x = gelu(self.conv2(gelu(self.conv1(features.astype(c.dtype)))))
    x = x + jnp.asarray(whisper_sinusoids(x.shape[1], c.width), x.dtype)
    x = self.encoder_dropout(x, deterministic=deterministic)
    x = run_blocks(self.encoder_blocks, x, AttentionInputs(), deterministic=deterministic)
    return self.encoder_norm(x)

  def decode_logits(self, tokens, encoded, *, positions=None, deterministic=True):
    """Teacher-forced (or, with decode=True, cached incremental) decoder logits [batch,
    length, vocab] (float32)."""
    decode = self.config.decode
    if decode and positions is None and not self.is_initializing():
      positions = self.position_index.value + jnp.arange(tokens.shape[1])[None]
      self.position_index.value = self.position_index.value + tokens.shape[1]
    y = self.embed(tokens, positions, deterministic=deterministic)
    y = run_blocks(self.decoder_blocks, y, AttentionInputs(causal=not decode),
                   encoded=encoded, encoded_inputs=AttentionInputs(),
                   deterministic=deterministic)
    return self.embed.attend(self.decoder_norm(y)).astype(jnp.float32)

  def token_logits(self, hidden):
    """Logits [..., vocab] (float32) of any hidden states through the tied token table: the
    decoder's head, and what a CTC loss on the encoder's output reads (training only)."""
    return self.embed.attend(hidden).astype(jnp.float32)

  def __call__(self, features, tokens, *, deterministic=True):
    encoded = self.encode(features, deterministic=deterministic)
    return self.decode_logits(tokens, encoded, deterministic=deterministic)

  def example_inputs(self):
    c = self.config
    return (jnp.zeros((1, 16, c.n_mels), jnp.float32),
            jnp.zeros((1, min(8, c.max_len)), jnp.int32))

  def layer_groups(self) -> LayerGroups:
    c = self.config
    return LayerGroups.of(c, below=("conv1", "conv2", "embed"),
                          above=("encoder_norm", "decoder_norm"), prefixes=(
                              ("encoder_blocks_", c.depth),
                              ("decoder_blocks_", c.decoder_depth or c.depth)))
