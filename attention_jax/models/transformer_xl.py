"""Transformer-XL (Dai et al. 2019): a language model with segment-level recurrence.

Each layer attends over [memory; segment] with relative positions (the four-term score, see
`kernels.relative_attention`); the global biases u, v are shared by all layers, as in the
official PyTorch code. Memory is explicit: `__call__` takes the previous segment's per-layer
inputs and returns the new ones, always under `stop_gradient`. The output is an adaptive
softmax (Grave et al. 2017) with the output weights tied to the embedding (div_val = 1).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers import TextEmbeddings, TransformerBlock
from attention_jax.layers.attention import relative_bias_params


def adaptive_log_probs(logits, cluster_logits, cutoffs: tuple[int, ...]):
  """Adaptive-softmax log-probabilities over the whole vocabulary.

  Args:
    logits: [..., vocab] token logits (head tokens first, then each tail cluster).
    cluster_logits: [..., n_clusters] logits of the tail clusters in the head softmax.
    cutoffs: ascending vocabulary boundaries of the clusters (the head is [0, cutoffs[0])).

  Returns:
    [..., vocab] normalised log-probabilities: head tokens from the head softmax over
    [head tokens; clusters]; a tail token from log p(cluster) + log p(token | cluster).
  """
  vocab = logits.shape[-1]
  bounds = (0,) + tuple(cutoffs) + (vocab,)
  head = jax.nn.log_softmax(jnp.concatenate([logits[..., :bounds[1]], cluster_logits], -1))
  parts = [head[..., :bounds[1]]]
  for c, (lo, hi) in enumerate(zip(bounds[1:-1], bounds[2:])):
    parts.append(head[..., bounds[1] + c, None] + jax.nn.log_softmax(logits[..., lo:hi]))
  return jnp.concatenate(parts, axis=-1)


class TransformerXL(nn.Module):
  """(tokens [batch, length], memory) -> (log_probs [batch, length, vocab], new memory).

  memory: None or [depth, batch, mem, width], each layer's inputs for the previous tokens.
  `mem_len` (attribute, or the call argument to change it at evaluation) is how many of the
  latest positions the new memory keeps.
  """
  vocab_size: int
  width: int = 410
  depth: int = 16
  num_heads: int = 10
  head_dim: int | None = None
  mlp_dim: int = 2100
  mem_len: int = 150
  cutoffs: tuple[int, ...] = ()
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  ln_eps: float = 1e-5
  kernel: str | Callable = "relative"  # a kernel with relative_attention's signature
  remat: str = "none"  # per-block rematerialisation (layers.transformer.REMAT)
  scan_layers: bool = False  # not available here: GPT, Bert and ViT stack their blocks
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens, memory=None, *, mask=None, mem_len: int | None = None,
               deterministic=True):
    """`mask` (boolean, broadcast to [batch, heads, length, mem + length]) further limits
    attention; causality over [memory; segment] is always applied."""
    if self.scan_layers:
      raise ValueError("scan_layers is available for GPT, Bert and ViT; TransformerXL keeps "
                       "its blocks unrolled (set model.scan_layers=False).")
    if self.cutoffs and (list(self.cutoffs) != sorted(set(self.cutoffs))
                         or not 0 < self.cutoffs[0] or self.cutoffs[-1] >= self.vocab_size):
      raise ValueError(f"cutoffs must be increasing and inside (0, vocab_size="
                       f"{self.vocab_size}), got {self.cutoffs}.")
    mem_len = self.mem_len if mem_len is None else mem_len
    if memory is not None and memory.shape[0] != self.depth:
      raise ValueError(f"memory must be [depth={self.depth}, batch, mem, width], got shape "
                       f"{memory.shape}.")
    embed = TextEmbeddings(self.vocab_size, self.width, position="none", scale_tokens=True,
                           dropout_rate=self.dropout_rate,
                           dtype=self.dtype, param_dtype=self.param_dtype, name="embed")
    head_dim = self.head_dim or self.width // self.num_heads
    biases = relative_bias_params(self, self.num_heads, head_dim, self.param_dtype)
    x = embed(tokens, deterministic=deterministic)
    new_memory = []
    for i in range(self.depth):
      layer_memory = None if memory is None else jax.lax.stop_gradient(memory[i])
      context = x if layer_memory is None else jnp.concatenate([layer_memory, x], axis=1)
      new_memory.append(jax.lax.stop_gradient(context[:, max(context.shape[1] - mem_len, 0):]))
      x = TransformerBlock(
          self.num_heads, self.mlp_dim, head_dim=head_dim, pre_ln=False, kernel=self.kernel,
          position="relative", dropout_rate=self.dropout_rate,
          attention_dropout_rate=self.attention_dropout_rate, ln_eps=self.ln_eps,
          activation="relu", attention_use_bias=False, remat=self.remat, dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"block_{i}")(
              x, mask=mask, memory=layer_memory, relative_biases=biases,
              deterministic=deterministic)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    logits = embed.attend(x).astype(jnp.float32)
    logits = logits + self.param("out_bias", nn.initializers.zeros, (self.vocab_size,),
                                 self.param_dtype)
    if self.cutoffs:
      cluster = nn.Dense(len(self.cutoffs), dtype=self.dtype, param_dtype=self.param_dtype,
                         name="cluster")(x).astype(jnp.float32)
      log_probs = adaptive_log_probs(logits, cluster, self.cutoffs)
    else:
      log_probs = jax.nn.log_softmax(logits)
    return log_probs, jnp.stack(new_memory)

  def example_inputs(self):
    return (jnp.zeros((1, 8), jnp.int32),)
