"""Transformer-XL (Dai et al. 2019): a language model with segment-level recurrence.

Each layer attends over [memory; segment] with relative positions (the four-term score, see
`kernels.relative_attention`); the global biases u, v are shared by all layers, as in the
official PyTorch code. Memory is explicit: `__call__` takes the previous segment's per-layer
inputs and returns the new ones, always under `stop_gradient`. The output is an adaptive
softmax (Grave et al. 2017) with the output weights tied to the embedding (div_val = 1).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers import AttentionInputs, TextEmbeddings, TransformerBlock
from attention_jax.layers.attention import relative_bias_params
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.partitioning import STACKED
from attention_jax.models.layouts import LayerGroups


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerXLConfig(TransformerConfig):
  """WikiText-103 base: post-LN, ReLU, relative positions without projection biases; memory
  of `mem_len` positions; an adaptive softmax with clusters at `cutoffs` (() = plain)."""
  vocab_size: int = 267735
  width: int = 410
  depth: int = 16
  num_heads: int = 10
  mlp_dim: int = 2100
  mem_len: int = 150
  cutoffs: tuple[int, ...] = ()
  pre_ln: bool = False
  ln_eps: float = 1e-5
  activation: str = "relu"
  position: str = "relative"
  kernel: str | Callable = "relative"  # a kernel with relative_attention's signature
  qkv_bias: bool = False
  out_bias: bool = False
  dropout_rate: float = 0.1


class _RecurrentLayer(TransformerBlock):
  """One Transformer-XL layer: (x [batch, length, width], its memory [batch, mem, width] or
  None, ...) -> (x, the latest `mem_len` positions of [memory; x] for the next segment), both
  memories under stop_gradient. Unrolled as `block_<i>` or the body of nn.scan."""

  def __call__(self, x, memory, inputs, relative_biases, mem_len: int, deterministic: bool):
    memory = None if memory is None else jax.lax.stop_gradient(memory)
    context = x if memory is None else jnp.concatenate([memory, x], axis=1)
    kept = jax.lax.stop_gradient(context[:, max(context.shape[1] - mem_len, 0):])
    return super().__call__(x, inputs, memory=memory, relative_biases=relative_biases,
                            deterministic=deterministic), kept


class TransformerXL(nn.Module):
  """(tokens [batch, length], memory) -> (log_probs [batch, length, vocab], new memory).

  memory: None or [depth, batch, mem, width], each layer's inputs for the previous tokens.
  `config.mem_len` (or the call argument, to change it at evaluation) is how many of the
  latest positions the new memory keeps.
  """
  config: TransformerXLConfig

  @nn.compact
  def __call__(self, tokens, memory=None, *, mask=None, mem_len: int | None = None,
               deterministic=True):
    """`mask` (boolean, broadcast to [batch, heads, length, mem + length]) further limits
    attention; causality over [memory; segment] is always applied."""
    c = self.config
    if c.cutoffs and (list(c.cutoffs) != sorted(set(c.cutoffs))
                      or not 0 < c.cutoffs[0] or c.cutoffs[-1] >= c.vocab_size):
      raise ValueError(f"cutoffs must be increasing and inside (0, vocab_size="
                       f"{c.vocab_size}), got {c.cutoffs}.")
    mem_len = c.mem_len if mem_len is None else mem_len
    if memory is not None and memory.shape[0] != c.depth:
      raise ValueError(f"memory must be [depth={c.depth}, batch, mem, width], got shape "
                       f"{memory.shape}.")
    embed = TextEmbeddings(c.vocab_size, c.width, position="none", scale_tokens=True,
                           dropout_rate=c.dropout_rate, dtype=c.dtype,
                           param_dtype=c.param_dtype, name="embed")
    head_dim = c.head_dim or c.width // c.num_heads
    biases = relative_bias_params(self, c.num_heads, head_dim, c.param_dtype)
    x = embed(tokens, deterministic=deterministic)
    shared = (AttentionInputs(mask=mask), biases, mem_len, deterministic)
    if c.scan_layers:  # one layer traced; parameters and memories on a leading `layers` axis
      layers = nn.scan(_RecurrentLayer, variable_axes={"params": 0, "intermediates": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=(nn.broadcast if memory is None else 0,) + (nn.broadcast,) * 4,
                       length=c.depth)(c, name=STACKED)
      x, new_memory = layers(x, memory, *shared)
    else:
      kept = []
      for i in range(c.depth):
        x, layer_kept = _RecurrentLayer(c, name=f"block_{i}")(
            x, None if memory is None else memory[i], *shared)
        kept.append(layer_kept)
      new_memory = jnp.stack(kept)
    x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
    logits = embed.attend(x).astype(jnp.float32)
    logits = logits + self.param("out_bias", nn.initializers.zeros, (c.vocab_size,),
                                 c.param_dtype)
    if c.cutoffs:
      cluster = nn.Dense(len(c.cutoffs), dtype=c.dtype, param_dtype=c.param_dtype,
                         name="cluster")(x).astype(jnp.float32)
      log_probs = adaptive_log_probs(logits, cluster, tuple(c.cutoffs))
    else:
      log_probs = jax.nn.log_softmax(logits)
    return log_probs, new_memory

  def example_inputs(self):
    return (jnp.zeros((1, 8), jnp.int32),)

  def layer_groups(self) -> LayerGroups:
    return LayerGroups.of(self.config, below=("embed",))
