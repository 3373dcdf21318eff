"""One frozen object that carries a transformer's hyperparameters through every layer.

A model family builds its blocks from a `TransformerConfig` instead of repeating field lists
(as Flax's lm1b example passes its `TransformerConfig` down): what the config says reaches
every block and attention layer, so a new option is added in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from attention_jax.kernels.positional import RopeScaling
from attention_jax.layers.lora import LoraSpec
from attention_jax.layers.norms import NORMS

# `position` values that act inside attention; the others ("learned", "sinusoidal", "none")
# live in the embeddings.
ATTENTION_POSITIONS = ("rotary", "alibi", "relative")
LAYER_TYPES = ("sliding", "full")
MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
              "v_head_dim")
MLA_DECODE = ("absorbed", "materialised")
MOE_DISPATCH = ("dropless", "capacity")
GROUPED_MATMULS = ("blocked", "ragged_dot")
EXPERT_COLLECTIVES = ("explicit", "compiler")
ROUTER_SCORING = ("softmax", "sigmoid")
# Fields that describe a mixture of experts: set only with num_experts.
MOE_FIELDS = ("experts_per_token", "expert_mlp_dim", "n_group", "topk_group", "router_bias",
              "swiglu_limit",
              "n_shared_experts", "shared_expert_gate", "first_k_dense_replace",
              "router_correction_bias", "router_bias_update_rate")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """Hyperparameters of a stack of transformer blocks (and of the model around it).

  Architecture (what the parameters depend on):
    width, depth, num_heads, mlp_dim; num_kv_heads (GQA/MQA; default num_heads); head_dim
    (default width // num_heads); vocab_size, max_len (0 where unused).
    pre_ln: x + f(norm(x)) (GPT, ViT, Llama) rather than norm(x + f(x)) (BERT, Vaswani).
    norm: "layer" (LayerNorm), "rms" (RMSNorm, Llama) or "rms_unit_offset" (RMSNorm with the
      weight 1 + scale, Gemma); ln_eps its epsilon.
    post_norms: also normalise each sublayer's output before the residual sum,
      x + norm(f(norm(x))) (Gemma 2/3; parameters attention_post_norm, mlp_post_norm).
    activation, gated_mlp (GLU: act(gate(x)) * fc1(x), SwiGLU with "silu"), mlp_bias.
    qkv_bias, out_bias: biases on the Q/K/V and output projections (Qwen2: True, False);
      key_bias: on the keys (None: qkv_bias; Whisper: False).
    qk_norm: the `norm` of each head's queries and keys (over head_dim, one weight shared by
      the heads) before the rotary embedding (Qwen3, Gemma 3).
    position: "learned", "sinusoidal", "none" (embeddings) or "rotary", "alibi", "relative"
      (inside attention); rotary_base and rope_scaling for "rotary".
    tie_embeddings: logits through the token table rather than their own projection.
    scale_embeddings: token embeddings multiplied by sqrt(width) (Gemma).
    final_logits_soft_cap: c caps the output logits at ±c, c·tanh(logit / c) (Gemma 2).
    query_pre_attn_scalar: attention scores scaled by query_pre_attn_scalar ** -0.5 rather
      than head_dim ** -0.5 (Gemma 2/3).
    layer_types: each layer's attention, "sliding" (keys within `local_window` of the
      diagonal) or "full", one per layer (Gemma 2 alternates them, Gemma 3 has 5 sliding to
      1 full); None: every layer has `local_window`. Decoding keeps a bounded cache of the
      window for the sliding layers. `scan_layers` scans over the repeating group
      (`layer_period()` layers) and runs the layers past its last whole repetition unrolled.
    local_rotary_base: the rotary base of the sliding layers, which then take no
      rope_scaling (Gemma 3's local layers); None: the same rotary as the full layers.
    attn_logits_soft_cap: c caps every attention score at ±c, c·tanh(score / c) (Gemma 2);
      None: no cap. Needs a kernel that takes `logits_soft_cap`.
    learned_sinks: one learned logit per head in every attention row's softmax denominator
      (GPT-OSS; parameter 'sinks' of each attention layer). Needs a kernel that takes `sinks`.
    kv_lora_rank: multi-head latent attention (MLA, DeepSeek-V2/V3; `LatentAttention`) when
      set: keys and values come from a compressed latent of this width; with q_lora_rank
      (a low-rank query; None: a full query projection), qk_nope_head_dim and
      qk_rope_head_dim (each query/key head's parts without and with rotary; the rotary key
      is one for all heads) and v_head_dim. None: standard multi-head attention.
    num_experts: a mixture of experts in every block's MLP (`layers.moe.MoeMlp`; Mixtral)
      when set: a float32 softmax router sends each token to experts_per_token of
      num_experts gated experts of width expert_mlp_dim (default mlp_dim), their outputs
      weighted by the router's probabilities, renormalised over the chosen experts when
      norm_topk_prob (Mixtral: True; Qwen3-MoE's config says), times
      routed_scaling_factor. None: a dense MLP.
      router_scoring: "softmax" (Mixtral, Qwen, DeepSeek-V2) or "sigmoid" (DeepSeek-V3) of
      the router logits. n_group, topk_group: group-limited top-k (DeepSeek), each token's
      experts chosen from its topk_group best groups of num_experts / n_group.
      router_correction_bias: DeepSeek-V3's e_score_correction_bias [E], added to the
      scores to choose experts but not to weight them; it gets no gradient: after each
      step training moves it by router_bias_update_rate towards an even load (0: fixed).
      n_shared_experts: a dense SwiGLU MLP n_shared_experts * expert_mlp_dim wide that
      every token takes beside its routed experts (DeepSeek; Qwen-MoE's shared expert,
      whose output is gated by a sigmoid with shared_expert_gate).
      first_k_dense_replace: the first k layers keep a dense MLP of width mlp_dim
      (DeepSeek); with scan_layers they run unrolled below the scanned stack.
      router_bias: a bias on the router's logits (GPT-OSS). mlp_bias also gives each expert
      its biases. swiglu_limit: GPT-OSS's clamped SwiGLU, (clip(up, ±limit) + 1) ·
      g · sigmoid(swiglu_alpha · g) with g = min(gate, limit); None: act(gate) · up.
      router_aux_loss_coef and router_z_loss_coef weight the load-balancing loss and the
      router z-loss (each a mean over the layers) that training adds to the task's loss
      (default 0: none).
  Runtime (free to change on a trained model):
    kernel (registry name or callable), local_window (keys within that distance of the
    diagonal; Mistral's sliding window), dropout_rate, attention_dropout_rate, remat,
    scan_layers, lora, decode (KV cache), sow_weights, dtype, param_dtype; mla_decode:
    what an MLA layer caches when decoding, "absorbed" (the latent, kv_lora_rank +
    qk_rope_head_dim numbers per token, with the up-projections folded into the query and
    output) or "materialised" (each head's keys and values); moe_dispatch: how tokens reach
    their experts, "dropless" (sorted by expert, grouped matmuls: grouped_matmul "blocked",
    layers.grouped_matmul's blocks of rows per expert, or "ragged_dot", jax.lax.ragged_dot,
    which XLA:CPU computes densely) or "capacity" (at most capacity_factor times an even
    share per expert, first choices before second ones; the rest dropped and counted);
    expert_collectives: how tokens reach experts on other devices of the mesh's expert
    axis, "explicit" (layers.expert_parallel's shard_map: all_to_all for capacity, an
    all-gather and a reduce-scatter for dropless) or "compiler" (XLA's partitioner).
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  vocab_size: int = 0
  max_len: int = 0
  pre_ln: bool = True
  norm: str = "layer"
  ln_eps: float = 1e-6
  activation: str = "gelu"
  gated_mlp: bool = False
  mlp_bias: bool = True
  qkv_bias: bool = True
  out_bias: bool = True
  key_bias: bool | None = None
  qk_norm: bool = False
  position: str = "none"
  rotary_base: float = 10000.0
  rope_scaling: RopeScaling | None = None
  tie_embeddings: bool = True
  scale_embeddings: bool = False
  final_logits_soft_cap: float | None = None
  query_pre_attn_scalar: float | None = None
  post_norms: bool = False
  layer_types: tuple[str, ...] | None = None
  local_rotary_base: float | None = None
  attn_logits_soft_cap: float | None = None
  learned_sinks: bool = False
  kv_lora_rank: int | None = None
  q_lora_rank: int | None = None
  qk_nope_head_dim: int | None = None
  qk_rope_head_dim: int | None = None
  v_head_dim: int | None = None
  num_experts: int | None = None
  experts_per_token: int | None = None
  expert_mlp_dim: int | None = None
  norm_topk_prob: bool = True
  router_bias: bool = False
  swiglu_limit: float | None = None
  swiglu_alpha: float = 1.702
  router_scoring: str = "softmax"
  routed_scaling_factor: float = 1.0
  n_group: int | None = None
  topk_group: int | None = None
  router_correction_bias: bool = False
  router_bias_update_rate: float = 0.0
  n_shared_experts: int = 0
  shared_expert_gate: bool = False
  first_k_dense_replace: int = 0
  router_aux_loss_coef: float = 0.0
  router_z_loss_coef: float = 0.0
  kernel: str | Callable = "dot_product"
  local_window: int | None = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  remat: str = "none"
  scan_layers: bool = False
  lora: LoraSpec | None = None
  decode: bool = False
  sow_weights: bool = False
  mla_decode: str = "absorbed"
  moe_dispatch: str = "dropless"
  grouped_matmul: str = "blocked"
  expert_collectives: str = "explicit"
  capacity_factor: float = 1.25
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}.")
    if self.local_window is not None and self.local_window < 0:
      raise ValueError(f"local_window must be >= 0 (or None), got {self.local_window}.")
    if self.layer_types is not None:
      self._check_layer_types()
    elif self.local_rotary_base is not None:
      raise ValueError("local_rotary_base is the rotary base of the sliding layers; set "
                       "layer_types to say which layers slide.")
    for name in ("final_logits_soft_cap", "attn_logits_soft_cap", "query_pre_attn_scalar"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive (or None), got {value}.")
    self._check_latent_attention()
    self._check_experts()

  def _check_layer_types(self):
    types = tuple(self.layer_types)  # a list from a command line or a JSON file
    object.__setattr__(self, "layer_types", types)
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
      raise ValueError(f"layer_types may hold {LAYER_TYPES}, got {unknown}.")
    if len(types) != self.depth:
      raise ValueError(f"layer_types has {len(types)} entries for depth={self.depth}: give "
                       "one per layer.")
    if "sliding" in types and self.local_window is None:
      raise ValueError("layer_types has sliding layers but local_window is None: set the "
                       "window they slide over.")

  def _check_latent_attention(self):
    dims = {name: getattr(self, name) for name in MLA_FIELDS}
    if self.mla_decode not in MLA_DECODE:
      raise ValueError(f"mla_decode must be one of {MLA_DECODE}, got {self.mla_decode!r}.")
    if self.kv_lora_rank is None:
      given = [name for name, value in dims.items() if value is not None]
      if given:
        raise ValueError(f"{', '.join(given)} describe multi-head latent attention; set "
                         "kv_lora_rank too (or leave them None).")
      return
    bad = {name: value for name, value in dims.items() if name != "q_lora_rank" and not (
        isinstance(value, int) and value > 0)}
    if self.q_lora_rank is not None and not self.q_lora_rank > 0:
      bad["q_lora_rank"] = self.q_lora_rank
    if bad:
      raise ValueError(f"multi-head latent attention needs positive integers {bad}; set "
                       f"{', '.join(n for n in MLA_FIELDS if n != 'q_lora_rank')} (and "
                       "q_lora_rank, or None for a full query projection).")
    if self.qk_rope_head_dim % 2:
      raise ValueError(f"qk_rope_head_dim must be even (rotary pairs), got "
                       f"{self.qk_rope_head_dim}.")
    clashes = {"position": (self.position, "rotary"), "qk_norm": (self.qk_norm, False),
               "num_kv_heads": (self.num_kv_heads, None), "head_dim": (self.head_dim, None),
               "local_window": (self.local_window, None),
               "layer_types": (self.layer_types, None)}
    wrong = {name: got for name, (got, want) in clashes.items() if got != want}
    if wrong:
      raise ValueError(f"multi-head latent attention (kv_lora_rank={self.kv_lora_rank}) "
                       "has rotary positions on every head, no QK-norm, GQA, head_dim or "
                       f"window; this config sets {wrong}.")

  def _check_experts(self):
    if self.moe_dispatch not in MOE_DISPATCH:
      raise ValueError(f"moe_dispatch must be one of {MOE_DISPATCH}, got "
                       f"{self.moe_dispatch!r}.")
    if self.grouped_matmul not in GROUPED_MATMULS:
      raise ValueError(f"grouped_matmul must be one of {GROUPED_MATMULS}, got "
                       f"{self.grouped_matmul!r}.")
    if self.expert_collectives not in EXPERT_COLLECTIVES:
      raise ValueError(f"expert_collectives must be one of {EXPERT_COLLECTIVES}, got "
                       f"{self.expert_collectives!r}.")
    if not self.capacity_factor > 0:
      raise ValueError(f"capacity_factor must be positive, got {self.capacity_factor}.")
    for name in ("router_aux_loss_coef", "router_z_loss_coef"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    if self.num_experts is None:
      given = [n for n in MOE_FIELDS if getattr(self, n)]
      if given:
        raise ValueError(f"{', '.join(given)} describe a mixture of experts; set num_experts "
                         "too (or leave them unset).")
      return
    experts, chosen = self.num_experts, self.experts_per_token
    if not (isinstance(experts, int) and experts >= 1 and isinstance(chosen, int)
            and 1 <= chosen <= experts):
      raise ValueError("a mixture of experts needs integers num_experts >= 1 and "
                       f"1 <= experts_per_token <= num_experts; got num_experts={experts}, "
                       f"experts_per_token={chosen}.")
    if self.expert_mlp_dim is not None and not self.expert_mlp_dim >= 1:
      raise ValueError(f"expert_mlp_dim must be >= 1 (or None: mlp_dim), got "
                       f"{self.expert_mlp_dim}.")
    self._check_router()
    if not (isinstance(self.n_shared_experts, int) and self.n_shared_experts >= 0):
      raise ValueError(f"n_shared_experts must be an integer >= 0, got "
                       f"{self.n_shared_experts}.")
    if self.shared_expert_gate and not self.n_shared_experts:
      raise ValueError("shared_expert_gate gates the shared experts' output; set "
                       "n_shared_experts >= 1 too.")
    if not (isinstance(self.first_k_dense_replace, int)
            and 0 <= self.first_k_dense_replace <= self.depth):
      raise ValueError(f"first_k_dense_replace must be an integer in [0, depth={self.depth}]"
                       f", got {self.first_k_dense_replace}.")

  def _check_router(self):
    experts = self.num_experts
    if self.router_scoring not in ROUTER_SCORING:
      raise ValueError(f"router_scoring must be one of {ROUTER_SCORING}, got "
                       f"{self.router_scoring!r}.")
    if self.swiglu_limit is not None and not self.swiglu_limit > 0:
      raise ValueError(f"swiglu_limit must be positive (or None), got {self.swiglu_limit}.")
    if not self.routed_scaling_factor > 0:
      raise ValueError(f"routed_scaling_factor must be positive, got "
                       f"{self.routed_scaling_factor}.")
    if not self.router_bias_update_rate >= 0:
      raise ValueError(f"router_bias_update_rate must be >= 0, got "
                       f"{self.router_bias_update_rate}.")
    if self.router_bias_update_rate and not self.router_correction_bias:
      raise ValueError(f"router_bias_update_rate={self.router_bias_update_rate} moves the "
                       "router's correction bias; set router_correction_bias=True too.")
    if (self.n_group is None) != (self.topk_group is None):
      raise ValueError("group-limited routing needs both n_group and topk_group (or "
                       f"neither); got n_group={self.n_group}, topk_group={self.topk_group}.")
    if self.n_group is None:
      return
    size = experts // self.n_group if self.n_group >= 1 else 0
    if not (self.n_group >= 1 and experts % self.n_group == 0
            and 1 <= self.topk_group <= self.n_group):
      raise ValueError(f"n_group={self.n_group} must divide num_experts={experts} and "
                       f"1 <= topk_group={self.topk_group} <= n_group.")
    if self.experts_per_token > self.topk_group * size:
      raise ValueError(f"experts_per_token={self.experts_per_token} experts cannot come from "
                       f"topk_group={self.topk_group} groups of {size}.")
    if self.router_correction_bias and self.n_group > 1 and size < 2:
      raise ValueError("with a correction bias a group scores by its two best experts; "
                       f"n_group={self.n_group} leaves {size} expert per group.")

  def layer_period(self) -> int:
    """The length of the shortest group of layers whose repetition gives `layer_types`
    (cut at depth); 1 without layer_types."""
    types = self.layer_types or ("full",)
    return next(p for p in range(1, len(types) + 1)
                if all(types[i] == types[i % p] for i in range(len(types))))

  @property
  def attention_position(self) -> str:
    """What attention does about positions: "rotary", "alibi", "relative" or "none"."""
    return self.position if self.position in ATTENTION_POSITIONS else "none"

  def replace(self, **changes) -> "TransformerConfig":
    """A copy with `changes`; an unknown field is an error that lists the valid ones."""
    unknown = sorted(set(changes) - set(field_names(type(self))))
    if unknown:
      raise ValueError(f"{type(self).__name__} has no field(s) {unknown}; valid: "
                       f"{', '.join(field_names(type(self)))}.")
    return dataclasses.replace(self, **changes)


def field_names(config_class) -> list[str]:
  return sorted(f.name for f in dataclasses.fields(config_class))


def with_options(module, **changes):
  """A module built from a config (a model, a TransformerBlock) with fields of its config
  changed: `with_options(model, decode=True)`, `with_options(model, lora=None)`."""
  return module.clone(config=module.config.replace(**changes))
