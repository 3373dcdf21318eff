"""DeepSeek-V2/V3 decoders: the Llama decoder whose self-attention is multi-head latent
attention (`layers.LatentAttention`; the config's kv_lora_rank, q_lora_rank,
qk_nope_head_dim, qk_rope_head_dim, v_head_dim), with dense MLPs in the first
first_k_dense_replace layers and, with num_experts, mixtures of experts above them
(`layers.moe.MoeMlp`: V2's softmax or V3's sigmoid router with its correction bias,
group-limited top-k, shared experts)."""

from __future__ import annotations

import dataclasses

from attention_jax.models.llama import Llama, LlamaConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeepseekConfig(LlamaConfig):
  """DeepSeek's choices: Llama's (pre-RMSNorm, SwiGLU, an untied head) with DeepSeek-V3's
  latent attention (a 512-wide key/value latent, a 1536-wide query latent, 128 + 64 query/key
  dims per head of which 64 rotary, 128-wide values) and RMSNorm epsilon 1e-6; dense MLPs
  unless num_experts is set (the deepseek-v2-lite and deepseek-v3 presets)."""
  ln_eps: float = 1e-6
  kv_lora_rank: int | None = 512
  q_lora_rank: int | None = 1536
  qk_nope_head_dim: int | None = 128
  qk_rope_head_dim: int | None = 64
  v_head_dim: int | None = 128


class Deepseek(Llama):
  """tokens [batch, length] -> next-token logits [batch, length, vocab_size] (float32), as
  `Llama` (the same inputs and decoding); each block's attention is a `LatentAttention`,
  which decodes from a cache of the latent (`mla_decode="absorbed"`) or of each head's keys
  and values ("materialised")."""
  config: DeepseekConfig
