"""ViT: patch embedding, class token, pre-LN encoder, classification head (Dosovitskiy et al.)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import PatchEmbedding
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.transformer import block_stack, norm_layer
from attention_jax.models.layouts import LayerGroups


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig(TransformerConfig):
  """ViT-B/16 at 224 pixels with an ImageNet-1k head."""
  num_classes: int = 1000
  image_size: int = 224
  channels: int = 3
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072


class ViT(nn.Module):
  """images [batch, image_size, image_size, channels] -> logits [batch, num_classes]."""
  config: ViTConfig

  @nn.compact
  def __call__(self, images, *, deterministic=True):
    c = self.config
    if images.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"images are {images.shape[1]}x{images.shape[2]} but the model was "
                       f"built for {c.image_size}x{c.image_size} (its position "
                       "embeddings are per patch); resize them or set image_size.")
    x = PatchEmbedding(c.patch_size, c.width, c.dtype, c.param_dtype,
                       name="patch_embed")(images)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, c.width), c.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, c.width)).astype(x.dtype),
                         x], axis=1)
    pos = self.param("position_embedding", nn.initializers.normal(0.02),
                     (1, x.shape[1], c.width), c.param_dtype)
    x = nn.Dropout(c.dropout_rate)(x + pos.astype(x.dtype), deterministic=deterministic)
    x = block_stack(x, c, deterministic=deterministic)
    x = norm_layer(c, "final_norm")(x)
    return nn.Dense(c.num_classes, kernel_init=nn.initializers.zeros, dtype=c.dtype,
                    param_dtype=c.param_dtype, name="head")(x[:, 0]).astype(jnp.float32)

  def example_inputs(self):
    c = self.config
    return (jnp.zeros((1, c.image_size, c.image_size, c.channels), jnp.float32),)

  def layer_groups(self) -> LayerGroups:
    return LayerGroups.of(self.config, below=("patch_embed", "cls_token",
                                              "position_embedding"), above=("final_norm",))
