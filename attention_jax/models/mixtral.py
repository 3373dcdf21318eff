"""Mixtral-style decoders: the Llama decoder whose every MLP is a mixture of experts
(`layers.moe.MoeMlp`; the config's num_experts, experts_per_token, expert_mlp_dim,
norm_topk_prob, moe_dispatch, capacity_factor): Mixtral, Qwen2-MoE (Q/K/V biases and a
gated shared expert: n_shared_experts, shared_expert_gate), Qwen3-MoE (QK-norm) and GPT-OSS
(learned sinks, alternating windows, router and expert biases, the clamped SwiGLU)."""

from __future__ import annotations

import dataclasses

from attention_jax.models.llama import Llama, LlamaConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtralConfig(LlamaConfig):
  """Mixtral's choices: Llama's, with 8 SwiGLU experts of which each token takes 2, their
  weights renormalised over the two."""
  num_experts: int | None = 8
  experts_per_token: int | None = 2


class Mixtral(Llama):
  """tokens [batch, length] -> next-token logits [batch, length, vocab_size] (float32), as
  `Llama`; each block's MLP routes every token to experts_per_token experts and sows its
  router losses and expert load into 'intermediates' (`layers.moe`)."""
  config: MixtralConfig
