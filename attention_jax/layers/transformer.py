"""The transformer block: self-attention, optional cross-attention, MLP; pre- or post-LN."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers.attention import MultiHeadAttention, default_kernel_init
from attention_jax.layers.lora import LoraSpec
from attention_jax.layers.mlp import Mlp
from attention_jax.layers.partitioning import STACKED


REMAT = ("none", "full", "dots", "dots_with_no_batch_dims")
_POLICIES = {"full": None,  # save nothing: recompute the whole block in the backward pass
             "dots": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
             "dots_with_no_batch_dims":
                 jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def check_remat(remat: str):
  if remat not in REMAT:
    raise ValueError(f"remat must be one of {REMAT}, got {remat!r}: 'full' recomputes each "
                     "block in the backward pass, 'dots' keeps only matmul outputs.")


class TransformerBlock(nn.Module):
  """x [batch, length, width] -> [batch, length, width].

  Pre-LN (GPT-2, ViT): x + f(LN(x)); post-LN (Vaswani, BERT, Transformer-XL): LN(x + f(x)).
  Dropout is applied to each sublayer's output before the residual sum.

  Attributes (beyond MultiHeadAttention's and Mlp's):
    cross_attention: add encoder-decoder attention over `encoded` after self-attention.
    lora: LoRA adapters on the attention and MLP projections its targets name.
    remat: rematerialisation in training (`jax.checkpoint`; the parameters are unchanged):
      "none", "full" (keep only the block's input), "dots" (keep matmul outputs) or
      "dots_with_no_batch_dims" (keep the weight matmuls' outputs, not attention's).
  """
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  pre_ln: bool = True
  cross_attention: bool = False
  kernel: str | Callable = "dot_product"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  ln_eps: float = 1e-6
  activation: str = "gelu"
  gated_mlp: bool = False
  position: str = "none"
  decode: bool = False
  use_bias: bool = True  # in the MLP
  attention_use_bias: bool = True  # in the attention projections
  sow_weights: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  lora: LoraSpec | None = None
  remat: str = "none"

  def _attention(self, name, decode=False, position="none"):
    return MultiHeadAttention(
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
        kernel=self.kernel, dropout_rate=self.attention_dropout_rate,
        use_bias=self.attention_use_bias,
        position=position, decode=decode, sow_weights=self.sow_weights, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=self.kernel_init, lora=self.lora, name=name)

  def _norm(self, name):
    return nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=name)

  def __call__(self, x, *, mask=None, causal=False, kv_lengths=None, segment_ids=None,
               memory=None, relative_biases=None, encoded=None, encoded_mask=None,
               encoded_lengths=None, deterministic=True):
    """Masks as `MultiHeadAttention`; `memory` [batch, mem_len, width] is prepended to the
    keys/values of self-attention (Transformer-XL); `encoded` is attended by cross-attention
    with `encoded_mask` / `encoded_lengths`."""
    check_remat(self.remat)
    args = (x, mask, kv_lengths, segment_ids, memory, relative_biases, encoded, encoded_mask,
            encoded_lengths, causal, deterministic)
    if self.remat == "none" or self.decode:
      return self._block(*args)
    # A method transform keeps the parameters in this module's scope (same names).
    return nn.remat(TransformerBlock._block, static_argnums=(10, 11),
                    policy=_POLICIES[self.remat])(self, *args)

  @nn.compact
  def _block(self, x, mask, kv_lengths, segment_ids, memory, relative_biases, encoded,
             encoded_mask, encoded_lengths, causal, deterministic):
    dropout = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)

    # Self-attention (keys over [memory; x] when memory is given).
    attention = self._attention("attention", self.decode, self.position)
    norm = self._norm("attention_norm")
    context = x if memory is None else jnp.concatenate([memory.astype(x.dtype), x], axis=1)
    attend = lambda q, kv: attention(q, kv, mask=mask, causal=causal, kv_lengths=kv_lengths,
                                     segment_ids=segment_ids, relative_biases=relative_biases,
                                     deterministic=deterministic)
    if self.pre_ln:
      normed = norm(context)
      x = x + dropout(attend(normed[:, -x.shape[1]:], normed))
    else:
      x = norm(x + dropout(attend(x, context)))

    if self.cross_attention:
      if encoded is None:
        raise ValueError("a block with cross_attention=True needs `encoded` (the encoder "
                         "output).")
      cross = self._attention("cross_attention")
      norm = self._norm("cross_attention_norm")
      attend = lambda q: cross(q, encoded, mask=encoded_mask, kv_lengths=encoded_lengths,
                               deterministic=deterministic)
      x = x + dropout(attend(norm(x))) if self.pre_ln else norm(x + dropout(attend(x)))

    mlp = Mlp(self.mlp_dim, activation=self.activation, gated=self.gated_mlp,
              use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
              kernel_init=self.kernel_init, lora=self.lora, name="mlp")
    norm = self._norm("mlp_norm")
    return x + dropout(mlp(norm(x))) if self.pre_ln else norm(x + dropout(mlp(x)))


class _ScanStep(TransformerBlock):
  """One TransformerBlock as nn.scan's body: (x, broadcast arguments) -> (x, None)."""

  def __call__(self, x, mask, kv_lengths, segment_ids, causal, deterministic):
    return super().__call__(x, mask=mask, kv_lengths=kv_lengths, segment_ids=segment_ids,
                            causal=causal, deterministic=deterministic), None


def scanned_blocks(depth: int, **block_options) -> nn.Module:
  """`depth` identical TransformerBlocks under `nn.scan`: one block is traced and compiled,
  so compile time does not grow with depth; every parameter (and KV-cache entry) gains a
  leading `layers` axis of size `depth`. Call the result as
  `(x, mask, kv_lengths, segment_ids, causal, deterministic) -> (x, None)`; name it
  `partitioning.STACKED` ("blocks"): sharding and the layout conversions look for it."""
  return nn.scan(_ScanStep, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * 5, length=depth)(**block_options)


def block_stack(x, depth: int, scan: bool, options: dict, *, prefix: str = "block_",
                mask=None, kv_lengths=None, segment_ids=None, causal=False,
                deterministic=True):
  """`depth` TransformerBlocks(**options) over x, unrolled (named `<prefix><i>`) or, with
  `scan`, under nn.scan (named "blocks", parameters stacked). Call from a compact method."""
  if scan:
    x, _ = scanned_blocks(depth, **options, name=STACKED)(x, mask, kv_lengths, segment_ids,
                                                          causal, deterministic)
    return x
  for i in range(depth):
    x = TransformerBlock(**options, name=f"{prefix}{i}")(
        x, mask=mask, kv_lengths=kv_lengths, segment_ids=segment_ids, causal=causal,
        deterministic=deterministic)
  return x
