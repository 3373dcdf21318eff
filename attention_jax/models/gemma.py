"""Gemma 2 and Gemma 3 (text) decoders: the Llama decoder with Gemma's choices, all of them
config fields (`TransformerConfig`): RMSNorm with the (1 + w) weight before and after each
sublayer, embeddings scaled by sqrt(width), GeGLU, `query_pre_attn_scalar`, attention and
final-logit soft-capping (Gemma 2), QK-norm and two rotary bases (Gemma 3), and sliding
layers between full ones (`layer_types`)."""

from __future__ import annotations

import dataclasses

from attention_jax.models.llama import Llama, LlamaConfig


def gemma_layer_types(depth: int, period: int) -> tuple[str, ...]:
  """Gemma's pattern: every `period`-th layer full, the others sliding (Gemma 2: period 2;
  Gemma 3: 6, five local layers to one global)."""
  return tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(depth))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmaConfig(LlamaConfig):
  """Gemma's choices: pre- and post-norms with the (1 + w) RMSNorm, GeGLU (tanh GELU), scaled
  and tied embeddings. Gemma 2 adds attn_logits_soft_cap, final_logits_soft_cap and
  alternating layer_types; Gemma 3 qk_norm, local_rotary_base and 5:1 layer_types."""
  norm: str = "rms_unit_offset"
  ln_eps: float = 1e-6
  activation: str = "gelu_tanh"
  post_norms: bool = True
  scale_embeddings: bool = True
  tie_embeddings: bool = True


class Gemma(Llama):
  """tokens [batch, length] -> next-token logits [batch, length, vocab_size] (float32), as
  `Llama` (the same inputs, decoding and parameter names, plus each block's
  attention_post_norm and mlp_post_norm)."""
  config: GemmaConfig
