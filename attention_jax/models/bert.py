"""BERT: a bidirectional post-LN encoder with pooler, tied MLM head and classifier head."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import TextEmbeddings, TransformerBlock, default_kernel_init
from attention_jax.layers.lora import LoraSpec
from attention_jax.layers.mlp import activation_fn
from attention_jax.layers.transformer import scanned_blocks

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


class Bert(nn.Module):
  """input_ids [batch, length] -> {"hidden", "pooled", and "logits" if num_classes}.

  `attention_mask` [batch, length] (1 = real token, 0 = padding) keeps padding out of every
  attention. "pooled" is BERT's pooler output, tanh(Dense(hidden[:, 0])). The classifier
  reads it (`classifier_pooling="cls"`, BERT) or the mean of the real tokens' hidden states
  ("mean", sentence-transformers). `mlm_logits(hidden)` gives masked-LM logits through the
  tied token embedding; the MLM head's parameters exist only once it is used (BertModel's
  parameter count otherwise). `lora` adds LoRA adapters to the encoder's projections.
  """
  vocab_size: int = 30522
  max_len: int = 512
  type_vocab_size: int = 2
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  ln_eps: float = 1e-12
  activation: str = "gelu"
  kernel: str | Callable = "dot_product"
  remat: str = "none"  # per-block rematerialisation (layers.transformer.REMAT)
  scan_layers: bool = False  # blocks under nn.scan, parameters stacked (models.layouts)
  num_classes: int | None = None
  classifier_pooling: str = "cls"
  lora: LoraSpec | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.classifier_pooling not in POOLINGS:
      raise ValueError(f"classifier_pooling must be one of {POOLINGS}, got "
                       f"{self.classifier_pooling!r}.")
    self.embed = TextEmbeddings(self.vocab_size, self.width, self.max_len,
                                type_vocab_size=self.type_vocab_size, layer_norm=True,
                                ln_eps=self.ln_eps, dropout_rate=self.dropout_rate,
                                dtype=self.dtype, param_dtype=self.param_dtype)
    options = dict(
        num_heads=self.num_heads, mlp_dim=self.mlp_dim, pre_ln=False, kernel=self.kernel,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        ln_eps=self.ln_eps, activation=self.activation, lora=self.lora, remat=self.remat,
        dtype=self.dtype, param_dtype=self.param_dtype)
    if self.scan_layers:  # "blocks", stacked
      self.blocks = scanned_blocks(self.depth, **options)
    else:  # "blocks_0", "blocks_1", ...
      self.blocks = [TransformerBlock(**options) for _ in range(self.depth)]
    self.pooler = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=default_kernel_init)
    self.mlm_head = MlmHead(self.width, self.activation, self.ln_eps, self.dtype,
                            self.param_dtype)
    self.mlm_bias = MlmBias(self.vocab_size, self.param_dtype)
    if self.num_classes:
      self.classifier = nn.Dense(self.num_classes, dtype=self.dtype,
                                 param_dtype=self.param_dtype, kernel_init=default_kernel_init)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *,
               deterministic=True):
    x = self.embed(input_ids, token_types=token_type_ids, deterministic=deterministic)
    mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
    if self.scan_layers:
      x, _ = self.blocks(x, mask, None, None, False, deterministic)
    else:
      for block in self.blocks:
        x = block(x, mask=mask, deterministic=deterministic)
    out = {"hidden": x, "pooled": jnp.tanh(self.pooler(x[:, 0]))}
    if self.num_classes:
      features = (out["pooled"] if self.classifier_pooling == "cls"
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
    return (jnp.zeros((1, min(8, self.max_len)), jnp.int32),)


class MlmBias(nn.Module):
  """The MLM output bias [vocab] (its own module so it exists only once the head is used)."""
  vocab_size: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    return self.param("bias", nn.initializers.zeros, (self.vocab_size,), self.param_dtype)
