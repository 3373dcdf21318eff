"""ViT: patch embedding, class token, pre-LN encoder, classification head (Dosovitskiy et al.)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import PatchEmbedding
from attention_jax.layers.transformer import block_stack
from attention_jax.layers.lora import LoraSpec


class ViT(nn.Module):
  """images [batch, image_size, image_size, channels] -> logits [batch, num_classes]."""
  num_classes: int = 1000
  image_size: int = 224
  channels: int = 3
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  ln_eps: float = 1e-6
  kernel: str | Callable = "dot_product"
  remat: str = "none"  # per-block rematerialisation (layers.transformer.REMAT)
  scan_layers: bool = False  # blocks under nn.scan, parameters stacked (models.layouts)
  lora: LoraSpec | None = None  # LoRA adapters (see attention_jax.layers.lora)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, deterministic=True):
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"images are {images.shape[1]}x{images.shape[2]} but the model was "
                       f"built for {self.image_size}x{self.image_size} (its position "
                       "embeddings are per patch); resize them or set image_size.")
    x = PatchEmbedding(self.patch_size, self.width, self.dtype, self.param_dtype,
                       name="patch_embed")(images)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype),
                         x], axis=1)
    pos = self.param("position_embedding", nn.initializers.normal(0.02),
                     (1, x.shape[1], self.width), self.param_dtype)
    x = nn.Dropout(self.dropout_rate)(x + pos.astype(x.dtype), deterministic=deterministic)
    options = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, pre_ln=True,
                   kernel=self.kernel, dropout_rate=self.dropout_rate,
                   attention_dropout_rate=self.attention_dropout_rate, ln_eps=self.ln_eps,
                   activation="gelu", lora=self.lora, remat=self.remat, dtype=self.dtype,
                   param_dtype=self.param_dtype)
    x = block_stack(x, self.depth, self.scan_layers, options, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="final_norm")(x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="head")(x[:, 0]).astype(jnp.float32)

  def example_inputs(self):
    return (jnp.zeros((1, self.image_size, self.image_size, self.channels), jnp.float32),)
