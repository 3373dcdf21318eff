"""BERT: a bidirectional post-LN encoder with pooler, tied MLM head and classifier head."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attention_jax import kernels
from attention_jax.layers import (AttentionInputs, TextEmbeddings, TransformerBlock,
                                  default_kernel_init)
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.mlp import activation_fn
from attention_jax.layers.transformer import run_blocks, scanned_blocks
from attention_jax.models.layouts import LayerGroups

POOLINGS = ("cls", "mean")


def mean_pool(hidden, attention_mask=None):
  """[batch, length, width] hidden states -> [batch, width], the mean over real tokens
  (`attention_mask` [batch, length], 1 = real), as sentence-transformers pools."""
  if attention_mask is None:
    return hidden.mean(axis=1)
  mask = attention_mask.astype(hidden.dtype)[..., None]
  return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


class MlmHead(nn.Module):
  """BERT's masked-LM transform: Dense -> activation -> LayerNorm (the decoder is tied)."""
  width: int
  activation: str
  ln_eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    x = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                 kernel_init=default_kernel_init, name="dense")(hidden)
    return nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="norm")(activation_fn(self.activation)(x))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig(TransformerConfig):
  """BERT-Base's architecture: post-LN, exact GELU, token types; `num_classes` adds a
  classifier over the pooled output ("cls") or the mean of the real tokens ("mean")."""
  vocab_size: int = 30522
  max_len: int = 512
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  type_vocab_size: int = 2
  pre_ln: bool = False
  ln_eps: float = 1e-12
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  num_classes: int | None = None
  classifier_pooling: str = "cls"


class Bert(nn.Module):
  """input_ids [batch, length] -> {"hidden", "pooled", and "logits" if num_classes}.

  `attention_mask` [batch, length] (1 = real token, 0 = padding) keeps padding out of every
  attention (as a mask; for a kernel that takes no mask, as key lengths, which assumes the
  padding is at the end of each row). "pooled" is BERT's pooler output,
  tanh(Dense(hidden[:, 0])). The classifier reads it (`classifier_pooling="cls"`, BERT) or
  the mean of the real tokens' hidden states ("mean", sentence-transformers).
  `mlm_logits(hidden)` gives masked-LM logits through the tied token embedding; the MLM
  head's parameters exist only once it is used (BertModel's parameter count otherwise).
  `config.lora` adds LoRA adapters to the encoder's projections.
  """
  config: BertConfig

  def setup(self):
    c = self.config
    if c.classifier_pooling not in POOLINGS:
      raise ValueError(f"classifier_pooling must be one of {POOLINGS}, got "
                       f"{c.classifier_pooling!r}.")
    self.embed = TextEmbeddings(c.vocab_size, c.width, c.max_len,
                                type_vocab_size=c.type_vocab_size, layer_norm=True,
                                ln_eps=c.ln_eps, dropout_rate=c.dropout_rate,
                                dtype=c.dtype, param_dtype=c.param_dtype)
    if c.scan_layers:  # "blocks", stacked
      self.blocks = scanned_blocks(c)
    else:  # "blocks_0", "blocks_1", ...
      self.blocks = [TransformerBlock(c) for _ in range(c.depth)]
    dense = lambda features: nn.Dense(features, dtype=c.dtype, param_dtype=c.param_dtype,
                                      kernel_init=default_kernel_init)
    self.pooler = dense(c.width)
    self.mlm_head = MlmHead(c.width, c.activation, c.ln_eps, c.dtype, c.param_dtype)
    self.mlm_bias = MlmBias(c.vocab_size, c.param_dtype)
    if c.num_classes:
      self.classifier = dense(c.num_classes)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
               deterministic=True):
    x = self.embed(input_ids, token_types=token_type_ids, deterministic=deterministic)
    mask = lengths = None
    if attention_mask is not None and kernels.get(self.config.kernel).supports("mask"):
      mask = attention_mask.astype(bool)[:, None, None, :]
    elif attention_mask is not None:  # e.g. the linear-cost kernels: right padding as lengths
      lengths = jnp.sum(attention_mask.astype(jnp.int32), axis=-1)
    x = run_blocks(self.blocks, x, AttentionInputs(mask=mask, kv_lengths=lengths),
                   deterministic=deterministic)
    out = {"hidden": x, "pooled": jnp.tanh(self.pooler(x[:, 0]))}
    if self.config.num_classes:
      features = (out["pooled"] if self.config.classifier_pooling == "cls"
                  else mean_pool(x, attention_mask))
      out["logits"] = self.classifier(
          self.dropout(features, deterministic=deterministic)).astype(jnp.float32)
    return out

  def mlm_logits(self, hidden):
    """[batch, length, width] hidden states -> [batch, length, vocab] masked-LM logits."""
    return (self.embed.attend(self.mlm_head(hidden)) + self.mlm_bias()).astype(jnp.float32)

  def pretrain(self, input_ids, token_type_ids=None, attention_mask=None, *,
               deterministic=True):
    """Encoder outputs plus "mlm_logits" (use as `method=` to initialise the MLM head)."""
    out = self(input_ids, token_type_ids, attention_mask, deterministic=deterministic)
    return {**out, "mlm_logits": self.mlm_logits(out["hidden"])}

  def example_inputs(self):
    return (jnp.zeros((1, min(8, self.config.max_len)), jnp.int32),)

  def layer_groups(self) -> LayerGroups:
    return LayerGroups.of(self.config, below=("embed",),
                          prefixes=(("blocks_", self.config.depth),))


class MlmBias(nn.Module):
  """The MLM output bias [vocab] (its own module so it exists only once the head is used)."""
  vocab_size: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    return self.param("bias", nn.initializers.zeros, (self.vocab_size,), self.param_dtype)
