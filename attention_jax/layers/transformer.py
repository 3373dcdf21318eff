"""The transformer block: self-attention, optional cross-attention, MLP; pre- or post-LN."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers.attention import MultiHeadAttention
from attention_jax.layers.config import TransformerConfig
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
  """x [batch, length, width] -> [batch, length, width], built from one `TransformerConfig`.

  Pre-LN (GPT-2, ViT, Llama): x + f(norm(x)); post-LN (Vaswani, BERT, Transformer-XL):
  norm(x + f(x)). Dropout is applied to each sublayer's output before the residual sum.
  `cross_attention` adds encoder-decoder attention over `encoded` after self-attention.
  `config.remat` rematerialises the block in training (`jax.checkpoint`; the parameters are
  unchanged): "none", "full" (keep only the block's input), "dots" (keep matmul outputs) or
  "dots_with_no_batch_dims" (keep the weight matmuls' outputs, not attention's).
  """
  config: TransformerConfig
  cross_attention: bool = False

  def _attention(self, name, decode=False, position="none"):
    c = self.config
    return MultiHeadAttention(
        num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
        kernel=c.kernel, dropout_rate=c.attention_dropout_rate, use_bias=c.qkv_bias,
        out_bias=c.out_bias, position=position, rotary_base=c.rotary_base,
        rope_scaling=c.rope_scaling,
        local_window=c.local_window if name == "attention" else None,  # self-attention only
        decode=decode, sow_weights=c.sow_weights,
        dtype=c.dtype, param_dtype=c.param_dtype, lora=c.lora, name=name)

  def _norm(self, name):
    return norm_layer(self.config, name)

  def __call__(self, x, *, mask=None, causal=False, kv_lengths=None, segment_ids=None,
               positions=None, memory=None, relative_biases=None, encoded=None,
               encoded_mask=None, encoded_lengths=None, deterministic=True):
    """Masks and `positions` as `MultiHeadAttention`; `memory` [batch, mem_len, width] is
    prepended to the keys/values of self-attention (Transformer-XL); `encoded` is attended
    by cross-attention with `encoded_mask` / `encoded_lengths`."""
    check_remat(self.config.remat)
    args = (x, mask, kv_lengths, segment_ids, positions, memory, relative_biases, encoded,
            encoded_mask, encoded_lengths, causal, deterministic)
    if self.config.remat == "none" or self.config.decode:
      return self._block(*args)
    # A method transform keeps the parameters in this module's scope (same names).
    return nn.remat(TransformerBlock._block, static_argnums=(11, 12),
                    policy=_POLICIES[self.config.remat])(self, *args)

  @nn.compact
  def _block(self, x, mask, kv_lengths, segment_ids, positions, memory, relative_biases,
             encoded, encoded_mask, encoded_lengths, causal, deterministic):
    c = self.config
    dropout = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)

    # Self-attention (keys over [memory; x] when memory is given).
    attention = self._attention("attention", c.decode, c.attention_position)
    norm = self._norm("attention_norm")
    context = x if memory is None else jnp.concatenate([memory.astype(x.dtype), x], axis=1)
    attend = lambda q, kv: attention(q, kv, mask=mask, causal=causal, kv_lengths=kv_lengths,
                                     segment_ids=segment_ids, positions=positions,
                                     relative_biases=relative_biases,
                                     deterministic=deterministic)
    if c.pre_ln:
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
      x = x + dropout(attend(norm(x))) if c.pre_ln else norm(x + dropout(attend(x)))

    mlp = Mlp(c.mlp_dim, activation=c.activation, gated=c.gated_mlp, use_bias=c.mlp_bias,
              dtype=c.dtype, param_dtype=c.param_dtype, lora=c.lora, name="mlp")
    norm = self._norm("mlp_norm")
    return x + dropout(mlp(norm(x))) if c.pre_ln else norm(x + dropout(mlp(x)))


def norm_layer(config: TransformerConfig, name: str | None = None) -> nn.Module:
  """The config's normalisation: LayerNorm or RMSNorm (scale only), epsilon `ln_eps`."""
  norm = nn.RMSNorm if config.norm == "rms" else nn.LayerNorm
  return norm(epsilon=config.ln_eps, dtype=config.dtype, param_dtype=config.param_dtype,
              name=name)


class _ScanStep(TransformerBlock):
  """One TransformerBlock as nn.scan's body: (x, broadcast arguments) -> (x, None)."""

  def __call__(self, x, mask, kv_lengths, segment_ids, positions, encoded, encoded_lengths,
               causal, deterministic):
    return super().__call__(x, mask=mask, kv_lengths=kv_lengths, segment_ids=segment_ids,
                            positions=positions, encoded=encoded,
                            encoded_lengths=encoded_lengths, causal=causal,
                            deterministic=deterministic), None


def scanned_blocks(config: TransformerConfig, **module_options) -> nn.Module:
  """`config.depth` identical TransformerBlocks under `nn.scan`: one block is traced and
  compiled, so compile time does not grow with depth; every parameter (and KV-cache entry)
  gains a leading `layers` axis of size `depth`. Call the result as `(x, mask, kv_lengths,
  segment_ids, positions, encoded, encoded_lengths, causal, deterministic) -> (x, None)`
  (`encoded`: what cross-attention reads, with module_options cross_attention=True). Name it
  "blocks" (`partitioning.STACKED`) or "<group>_blocks" in a model with several stacks:
  sharding and the layout conversions look for these names."""
  return nn.scan(_ScanStep, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * 8, length=config.depth)(config, **module_options)


def block_stack(x, config: TransformerConfig, *, prefix: str = "block_", mask=None,
                kv_lengths=None, segment_ids=None, positions=None, causal=False,
                deterministic=True):
  """`config.depth` TransformerBlocks over x, unrolled (named `<prefix><i>`) or, with
  `config.scan_layers`, under nn.scan (named "blocks", parameters stacked). Call from a
  compact method."""
  if config.scan_layers:
    x, _ = scanned_blocks(config, name=STACKED)(x, mask, kv_lengths, segment_ids, positions,
                                                None, None, causal, deterministic)
    return x
  for i in range(config.depth):
    x = TransformerBlock(config, name=f"{prefix}{i}")(
        x, mask=mask, kv_lengths=kv_lengths, segment_ids=segment_ids, positions=positions,
        causal=causal, deterministic=deterministic)
  return x
