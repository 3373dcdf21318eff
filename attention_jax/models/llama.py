"""Llama-style decoders (Llama 2/3, Mistral, Qwen2, Qwen3, SmolLM, TinyLlama): RMSNorm,
SwiGLU, rotary positions, grouped-query attention; Qwen2's Q/K/V bias, Qwen3's QK-norm and
Mistral's sliding window are config fields. Parameter names follow our layers; `pretrained`
maps Hugging Face's."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.layers import AttentionInputs, TextEmbeddings, default_kernel_init
from attention_jax.layers.config import TransformerConfig
from attention_jax.layers.transformer import block_stack, norm_layer
from attention_jax.models.layouts import LayerGroups
from attention_jax.models.gpt import decode_positions


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig(TransformerConfig):
  """Llama's choices: pre-RMSNorm, SwiGLU MLP without biases, rotary positions, an untied
  output head. Set num_kv_heads for GQA, qkv_bias for Qwen2, qk_norm (and head_dim) for
  Qwen3, local_window for Mistral."""
  norm: str = "rms"
  ln_eps: float = 1e-5
  activation: str = "silu"
  gated_mlp: bool = True
  mlp_bias: bool = False
  qkv_bias: bool = False
  out_bias: bool = False
  position: str = "rotary"
  tie_embeddings: bool = False
  dropout_rate: float = 0.0


class Llama(nn.Module):
  """tokens [batch, length] -> next-token logits [batch, length, vocab_size] (float32).

  `positions` [batch, length] are the rotary positions (packed rows restart them per
  document, left-padded rows start them at the first real token); `segment_ids` keep packed
  documents (or padding, id 0 against real tokens' 1) apart; `mask` (boolean, broadcast to
  [batch, heads, length, keys]) further limits attention. With `config.decode` the
  attention layers keep a KV cache of kv_heads heads (see `models.generate`).
  """
  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens, *, positions=None, segment_ids=None, mask=None,
               deterministic=True):
    c = self.config
    if c.position != "rotary":
      raise ValueError(f"a Llama uses rotary positions, got position={c.position!r}.")
    if c.decode:
      positions = decode_positions(self, tokens.shape[1], positions)
    embed = TextEmbeddings(c.vocab_size, c.width, c.max_len, position="none",
                           scale_tokens=c.scale_embeddings, dropout_rate=c.dropout_rate,
                           dtype=c.dtype,
                           param_dtype=c.param_dtype, name="embed")
    x = embed(tokens, positions, deterministic=deterministic)
    inputs = AttentionInputs(mask=mask, segment_ids=segment_ids, positions=positions,
                             causal=not c.decode)
    x = block_stack(x, c, inputs, deterministic=deterministic)
    x = norm_layer(c, "final_norm")(x)
    if c.tie_embeddings:
      logits = embed.attend(x).astype(jnp.float32)
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
                        kernel_init=default_kernel_init, name="lm_head")(x).astype(jnp.float32)
    if c.final_logits_soft_cap is not None:
      cap = c.final_logits_soft_cap
      logits = cap * jnp.tanh(logits / cap)
    return logits

  def example_inputs(self):
    return (jnp.zeros((1, min(8, self.config.max_len or 8)), jnp.int32),)

  def layer_groups(self) -> LayerGroups:
    return LayerGroups.of(self.config, below=("embed",), above=("final_norm", "lm_head"))
