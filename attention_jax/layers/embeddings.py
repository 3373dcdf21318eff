"""Token, position and segment (token type) embeddings, and patch embeddings for images."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.kernels import positional
from attention_jax.layers.attention import default_kernel_init

POSITION_KINDS = ("learned", "sinusoidal", "none")


class TextEmbeddings(nn.Module):
  """tokens [batch, length] -> [batch, length, width].

  Sum of token, position ("learned", "sinusoidal" or "none" for rotary/relative models) and,
  if `type_vocab_size`, token-type embeddings; then optional LayerNorm (BERT) and dropout.
  `attend` gives logits against the token table (tied output embeddings).
  """
  vocab_size: int
  width: int
  max_len: int = 0  # positions a "learned" table holds; the longest input allowed (0: any)
  position: str = "learned"
  type_vocab_size: int = 0
  layer_norm: bool = False
  ln_eps: float = 1e-12
  scale_tokens: bool = False  # multiply token embeddings by sqrt(width) (Vaswani et al.)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.position not in POSITION_KINDS:
      raise ValueError(f"position must be one of {POSITION_KINDS}, got {self.position!r}.")
    if self.position == "learned" and self.max_len < 1:
      raise ValueError("learned position embeddings need max_len >= 1.")
    embed = lambda n, name: nn.Embed(n, self.width, embedding_init=default_kernel_init,
                                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    self.token = embed(self.vocab_size, "token")
    if self.position == "learned":
      self.position_table = embed(self.max_len, "position")
    if self.type_vocab_size:
      self.token_type = embed(self.type_vocab_size, "token_type")
    if self.layer_norm:
      self.norm = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="norm")
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, tokens, positions=None, token_types=None, deterministic=True):
    """positions: int [batch|1, length], default 0..length-1 (with a KV cache: the index)."""
    length = tokens.shape[-1]
    if positions is None:
      if self.max_len and length > self.max_len:
        raise ValueError(f"sequence length {length} exceeds the model's maximum of "
                         f"{self.max_len} positions; truncate the input or build the model "
                         "with a larger max_len.")
      positions = jnp.arange(length)[None]
    x = self.token(tokens)
    if self.scale_tokens:
      x = x * math.sqrt(self.width)
    if self.position == "learned":
      x = x + self.position_table(positions)
    elif self.position == "sinusoidal":
      x = x + positional.sinusoidal_embedding(positions, self.width).astype(x.dtype)
    if self.type_vocab_size:
      x = x + self.token_type(jnp.zeros_like(tokens) if token_types is None else token_types)
    if self.layer_norm:
      x = self.norm(x)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x):
    """[..., width] -> [..., vocab_size] logits with the token table (tied embeddings)."""
    return self.token.attend(x)


class PatchEmbedding(nn.Module):
  """images [batch, height, width, channels] -> patches [batch, num_patches, width]."""
  patch_size: int
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4:
      raise ValueError(f"images must be [batch, height, width, channels], got shape "
                       f"{images.shape}.")
    h, w = images.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"image size {h}x{w} is not divisible by the patch size "
                       f"{self.patch_size}; resize or crop the images.")
    x = nn.Conv(self.width, (self.patch_size,) * 2, strides=(self.patch_size,) * 2,
                padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
                name="projection")(images)
    return x.reshape(x.shape[0], -1, self.width)
