"""Flax Linen layers built on `attention_jax.kernels`."""

from attention_jax.layers.attention import MultiHeadAttention, default_kernel_init, head_dims
from attention_jax.layers.embeddings import PatchEmbedding, TextEmbeddings
from attention_jax.layers.inputs import AttentionInputs
from attention_jax.layers.lora import LoraSpec
from attention_jax.layers.mlp import ACTIVATIONS, Mlp
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.transformer import TransformerBlock

__all__ = ["ACTIVATIONS", "AttentionInputs", "LoraSpec", "MultiHeadAttention", "Mlp", "PatchEmbedding",
           "TextEmbeddings", "TransformerBlock", "TransformerConfig", "default_kernel_init",
           "head_dims"]
