"""The transformer block: self-attention, optional cross-attention, MLP; pre- or post-LN."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.layers.attention import MultiHeadAttention
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.inputs import AttentionInputs
from attention_jax.layers.latent_attention import LatentAttention
from attention_jax.layers.mlp import Mlp
from attention_jax.layers.moe import MoeMlp
from attention_jax.layers.norms import make_norm
from attention_jax.layers.partitioning import GROUP_MEMBER, STACKED


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
  `layer_type` is this block's entry of `config.layer_types` ("sliding": self-attention over
  `local_window`, with `local_rotary_base` when set; "full"); None without layer_types.
  `config.post_norms` normalises each sublayer's output too (Gemma); `config.kv_lora_rank`
  makes self-attention multi-head latent attention (`LatentAttention`, DeepSeek);
  `config.num_experts` makes the MLP a mixture of experts (`MoeMlp`, Mixtral) unless
  `dense_mlp` (the layers below `config.first_k_dense_replace`, DeepSeek).
  `config.remat` rematerialises the block in training (`jax.checkpoint`; the parameters are
  unchanged): "none", "full" (keep only the block's input), "dots" (keep matmul outputs) or
  "dots_with_no_batch_dims" (keep the weight matmuls' outputs, not attention's).
  """
  config: TransformerConfig
  cross_attention: bool = False
  layer_type: str | None = None
  dense_mlp: bool = False

  def _attention(self, name, decode=False, position="none", cache_kv=False):
    c = self.config
    if (c.layer_types is None) != (self.layer_type is None):
      raise ValueError(f"a block of a config with layer_types={c.layer_types} needs its "
                       f"layer_type (got {self.layer_type!r}); build the stack with "
                       "`block_stack` or `scanned_blocks`.")
    local = name == "attention" and self.layer_type != "full"  # self-attention only
    own_rotary = local and self.layer_type == "sliding" and c.local_rotary_base is not None
    layer, latent = MultiHeadAttention, {}
    if name == "attention" and c.kv_lora_rank is not None:
      layer = LatentAttention
      latent = dict(kv_lora_rank=c.kv_lora_rank, q_lora_rank=c.q_lora_rank,
                    qk_nope_head_dim=c.qk_nope_head_dim, qk_rope_head_dim=c.qk_rope_head_dim,
                    v_head_dim=c.v_head_dim, absorbed_decode=c.mla_decode == "absorbed")
    return layer(
        **latent, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
        kernel=c.kernel, dropout_rate=c.attention_dropout_rate, use_bias=c.qkv_bias,
        out_bias=c.out_bias, key_bias=c.key_bias, position=position,
        rotary_base=c.local_rotary_base if own_rotary else c.rotary_base,
        rope_scaling=None if own_rotary else c.rope_scaling,
        local_window=c.local_window if local else None,
        decode=decode, cache_kv=cache_kv, sow_weights=c.sow_weights, logits_soft_cap=c.attn_logits_soft_cap,
        scale=None if c.query_pre_attn_scalar is None else c.query_pre_attn_scalar ** -0.5,
        learned_sinks=c.learned_sinks, qk_norm=c.norm if c.qk_norm else None,
        norm_eps=c.ln_eps, dtype=c.dtype, param_dtype=c.param_dtype, lora=c.lora, name=name)

  def _norm(self, name):
    return norm_layer(self.config, name)

  def _post_norm(self, name):
    """The sublayer output's norm with `post_norms` (Gemma), else nothing."""
    return self._norm(name) if self.config.post_norms else (lambda y: y)

  def __call__(self, x, inputs: AttentionInputs | None = None, *, encoded=None,
               encoded_inputs: AttentionInputs | None = None, memory=None,
               relative_biases=None, deterministic=True):
    """`inputs` are self-attention's (AttentionInputs); `memory` [batch, mem_len, width] is
    prepended to its keys/values (Transformer-XL), which share `relative_biases`; `encoded`
    [batch, src_len, width] is what cross-attention reads, with `encoded_inputs` (while
    decoding, None after the first call: its keys and values are cached)."""
    check_remat(self.config.remat)
    args = (x, inputs or AttentionInputs(), encoded, encoded_inputs or AttentionInputs(),
            memory, relative_biases, deterministic)
    if self.config.remat == "none" or self.config.decode:
      return self._block(*args)
    # A method transform keeps the parameters in this module's scope (same names).
    return nn.remat(TransformerBlock._block, static_argnums=(len(args),),  # deterministic
                    policy=_POLICIES[self.config.remat])(self, *args)

  @nn.compact
  def _block(self, x, inputs, encoded, encoded_inputs, memory, relative_biases,
             deterministic):
    c = self.config
    dropout = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=deterministic)

    # Self-attention (keys over [memory; x] when memory is given).
    attention = self._attention("attention", c.decode, c.attention_position)
    norm = self._norm("attention_norm")
    context = x if memory is None else jnp.concatenate([memory.astype(x.dtype), x], axis=1)
    post_norm = self._post_norm("attention_post_norm")
    attend = lambda q, kv: post_norm(attention(q, kv, inputs, relative_biases=relative_biases,
                                               deterministic=deterministic))
    if c.pre_ln:
      normed = norm(context)
      x = x + dropout(attend(normed[:, -x.shape[1]:], normed))
    else:
      x = norm(x + dropout(attend(x, context)))

    if self.cross_attention:
      if encoded is None and not c.decode:
        raise ValueError("a block with cross_attention=True needs `encoded` (the encoder "
                         "output).")
      cross = self._attention("cross_attention", cache_kv=c.decode)
      norm = self._norm("cross_attention_norm")
      attend = lambda q: cross(q, encoded, encoded_inputs, deterministic=deterministic)
      x = x + dropout(attend(norm(x))) if c.pre_ln else norm(x + dropout(attend(x)))

    if c.num_experts is None or self.dense_mlp:
      mlp = Mlp(c.mlp_dim, activation=c.activation, gated=c.gated_mlp, use_bias=c.mlp_bias,
                dtype=c.dtype, param_dtype=c.param_dtype, lora=c.lora, name="mlp")
    else:
      mlp = MoeMlp(c, name="mlp")
    norm, post_norm = self._norm("mlp_norm"), self._post_norm("mlp_post_norm")
    return (x + dropout(post_norm(mlp(norm(x)))) if c.pre_ln
            else norm(x + dropout(post_norm(mlp(x)))))


def norm_layer(config: TransformerConfig, name: str | None = None) -> nn.Module:
  """The config's normalisation: LayerNorm or RMSNorm (scale only), epsilon `ln_eps`."""
  return make_norm(config.norm, epsilon=config.ln_eps, dtype=config.dtype,
                   param_dtype=config.param_dtype, name=name)


class _ScanStep(TransformerBlock):
  """One TransformerBlock as nn.scan's body: (x, inputs, encoded, encoded_inputs,
  deterministic) -> (x, None), everything but x the same at every layer."""

  def __call__(self, x, inputs, encoded, encoded_inputs, deterministic):
    return super().__call__(x, inputs, encoded=encoded, encoded_inputs=encoded_inputs,
                            deterministic=deterministic), None


class _GroupStep(nn.Module):
  """One repeating group of blocks (`layer_types`' period; block j named `layer_<j>`) as
  nn.scan's body, called as `_ScanStep`."""
  config: TransformerConfig
  layer_types: tuple[str, ...]

  @nn.compact
  def __call__(self, x, inputs, encoded, encoded_inputs, deterministic):
    for j, layer_type in enumerate(self.layer_types):
      x = TransformerBlock(self.config, layer_type=layer_type, name=f"{GROUP_MEMBER}{j}")(
          x, inputs, encoded=encoded, encoded_inputs=encoded_inputs,
          deterministic=deterministic)
    return x, None


def scanned_depth(config: TransformerConfig) -> int:
  """How many of the config's layers `scanned_blocks` holds: all of them from
  `config.first_k_dense_replace` up (the dense layers below run unrolled), or with mixed
  layer_types the whole repetitions of their period (the rest run unrolled above)."""
  period = config.layer_period()
  return (config.depth - config.first_k_dense_replace) // period * period


def scanned_blocks(config: TransformerConfig, *, tail: bool = False,
                   **module_options) -> nn.Module:
  """TransformerBlocks under `nn.scan`: one step is traced and compiled, so compile time does
  not grow with depth. Layers all alike: `config.depth` steps of one block, every parameter
  (and KV-cache entry) with a leading `layers` axis of size depth. Mixed `layer_types`
  (Gemma's sliding and full layers): steps of one period of blocks (`layer_<j>` the j-th of
  each), depth // period of them; `block_stack` runs the remaining depth % period layers
  unrolled above (`tail=True` says the caller runs them; else such a depth is refused). Run
  it with `run_blocks`. Name it "blocks" (`partitioning.STACKED`) or
  "<group>_blocks" in a model with several stacks: sharding and the layout conversions look
  for these names."""
  period, start = config.layer_period(), config.first_k_dense_replace
  if (config.depth - start) % period and not tail:
    raise ValueError(f"layer_types={config.layer_types} repeat every {period} layers, which "
                     f"does not divide depth={config.depth}; scan these layers with "
                     "`block_stack`, which runs the last ones unrolled.")
  scan = functools.partial(
      nn.scan, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
      split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
      length=scanned_depth(config) // period)
  if period == 1:
    layer_type = config.layer_types[start] if config.layer_types else None
    return scan(_ScanStep)(config, layer_type=layer_type, **module_options)
  return scan(_GroupStep)(config, layer_types=config.layer_types[start:start + period],
                          **module_options)


def run_blocks(blocks, x, inputs: AttentionInputs | None = None, *, encoded=None,
               encoded_inputs: AttentionInputs | None = None, deterministic=True):
  """x [batch, length, width] through a stack: a sequence of TransformerBlocks, or
  `scanned_blocks`' module; `encoded` and `encoded_inputs` for cross-attention."""
  if isinstance(blocks, (list, tuple)):
    for block in blocks:
      x = block(x, inputs, encoded=encoded, encoded_inputs=encoded_inputs,
                deterministic=deterministic)
    return x
  return blocks(x, inputs or AttentionInputs(), encoded, encoded_inputs or AttentionInputs(),
                deterministic)[0]


def block_stack(x, config: TransformerConfig, inputs: AttentionInputs | None = None, *,
                prefix: str = "block_", deterministic=True):
  """`config.depth` TransformerBlocks over x, unrolled (named `<prefix><i>`) or, with
  `config.scan_layers`, under nn.scan (named "blocks", parameters stacked; the
  first_k_dense_replace dense layers below and, with mixed layer_types, the layers past the
  last whole period above stay unrolled, `<prefix><i>`). Call from a compact method."""
  types = config.layer_types or (None,) * config.depth
  def unrolled(x, layers):
    return run_blocks([TransformerBlock(config, layer_type=types[i],
                                        dense_mlp=i < config.first_k_dense_replace,
                                        name=f"{prefix}{i}") for i in layers],
                      x, inputs, deterministic=deterministic)
  if not config.scan_layers:
    return unrolled(x, range(config.depth))
  x = unrolled(x, range(config.first_k_dense_replace))
  if scanned_depth(config):
    x = run_blocks(scanned_blocks(config, tail=True, name=STACKED), x, inputs,
                   deterministic=deterministic)
  return unrolled(x, range(config.first_k_dense_replace + scanned_depth(config),
                           config.depth))
