"""A mixture-of-experts MLP (Mixtral, Qwen-MoE): pure functions for routing and the two
dispatches, a dense reference, and the module that holds the weights.

Each token's float32 router logits pick experts_per_token (k) of num_experts (E) gated
experts, act(x W_gate) * (x W_up) W_down, whose outputs are summed with the router's softmax
probabilities, renormalised over the k chosen when `normalize` (Mixtral). Dispatch:

  dropless: the N·k (token, expert) assignments sorted by expert and run as three grouped
    matmuls (`jax.lax.ragged_dot`), so no token is dropped and no expert computes padding;
  capacity: each expert takes at most C = ceil(capacity_factor · N·k / E) assignments into a
    fixed [E, C, width] buffer, first choices of every token before second ones (GShard's
    priority), each choice in token order; the others are dropped (their weight lost) and
    counted.

`dense_reference` runs every expert on every token and masks: the tests' ground truth.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.layers.attention import default_kernel_init
from attention_jax.layers.mlp import activation_fn

EXPERTS = "experts"  # the module holding the stacked expert weights gate, fc1 (up), fc2 (down)


def route(logits, k: int, normalize: bool):
  """(weights float32 [N, k], experts int32 [N, k], probabilities float32 [N, E]) from
  router logits [N, E]: the k most probable experts of each token."""
  probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  weights, experts = lax.top_k(probabilities, k)
  if normalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return weights, experts.astype(jnp.int32), probabilities


def _glu(x, gate, up, activation: str):
  return activation_fn(activation)(gate(x)) * up(x)


def dense_reference(tokens, weights, experts, gate, up, down, activation: str):
  """Every expert on every token, masked to the chosen ones: tokens [N, d], weights and
  experts [N, k], gate/up [E, d, F], down [E, F, d] -> [N, d]."""
  n, num_experts = tokens.shape[0], gate.shape[0]
  combine = jnp.zeros((n, num_experts), jnp.float32).at[
      jnp.arange(n)[:, None], experts].add(weights)
  hidden = _glu(tokens, lambda x: jnp.einsum("nd,edf->enf", x, gate),
                lambda x: jnp.einsum("nd,edf->enf", x, up), activation)
  outputs = jnp.einsum("enf,efd->end", hidden, down)
  return jnp.einsum("ne,end->nd", combine.astype(outputs.dtype), outputs)


def dropless(tokens, weights, experts, gate, up, down, activation: str):
  """The chosen experts only, every assignment kept: sorted by expert, grouped matmuls.
  Shapes as `dense_reference`."""
  n, k = experts.shape
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)  # assignments grouped by expert, tokens in order
  source = order // k
  sizes = jnp.bincount(flat, length=gate.shape[0]).astype(jnp.int32)
  grouped = lambda w: lambda x: lax.ragged_dot(x, w, sizes)
  hidden = _glu(tokens[source], grouped(gate), grouped(up), activation)
  outputs = grouped(down)(hidden) * weights.reshape(-1)[order][:, None].astype(hidden.dtype)
  return jnp.zeros_like(tokens).at[source].add(outputs)


def capacity_slots(experts, num_experts: int, capacity: int):
  """(slot [N, k] of each assignment in its expert's buffer, kept [N, k]): first choices of
  all tokens before second ones, each in token order; a slot >= capacity is dropped."""
  n, k = experts.shape
  priority = experts.T.reshape(-1)  # choice-major: all first choices, then the seconds
  one_hot = jax.nn.one_hot(priority, num_experts, dtype=jnp.int32)
  slot = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)
  slot = slot.reshape(k, n).T
  return slot, slot < capacity


def with_capacity(tokens, weights, experts, gate, up, down, activation: str,
                  capacity_factor: float):
  """(outputs [N, d], fraction of assignments dropped): at most ceil(capacity_factor·N·k/E)
  per expert (`capacity_slots`). Shapes as `dense_reference`."""
  n, k = experts.shape
  num_experts = gate.shape[0]
  capacity = max(1, math.ceil(capacity_factor * n * k / num_experts))
  slot, kept = capacity_slots(experts, num_experts, capacity)
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k))
  buffer = jnp.zeros((num_experts, capacity, tokens.shape[-1]), tokens.dtype).at[
      experts, slot].set(tokens[rows], mode="drop")  # dropped slots are out of bounds
  hidden = _glu(buffer, lambda x: jnp.einsum("ecd,edf->ecf", x, gate),
                lambda x: jnp.einsum("ecd,edf->ecf", x, up), activation)
  outputs = jnp.einsum("ecf,efd->ecd", hidden, down)
  taken = outputs.at[experts, jnp.minimum(slot, capacity - 1)].get()  # [N, k, d]
  scale = jnp.where(kept, weights, 0.0).astype(taken.dtype)
  return jnp.einsum("nk,nkd->nd", scale, taken), 1.0 - jnp.mean(kept.astype(jnp.float32))


def load_balancing_loss(probabilities, experts, num_experts: int):
  """Switch/Mixtral's auxiliary loss, E · Σ_e f_e · P_e, with f the fraction of tokens whose
  choices include e (per choice, summed: transformers' `load_balancing_loss_func`) and P the
  mean router probability; 1 when the load is even (per choice)."""
  fractions = jnp.mean(jax.nn.one_hot(experts, num_experts, dtype=jnp.float32), axis=0)
  return num_experts * jnp.sum(fractions * jnp.mean(probabilities, axis=0)[None])


def router_z_loss(logits):
  """ST-MoE's router z-loss: the mean squared log-sum-exp of the router logits."""
  return jnp.mean(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2)


SOWN = ("load_balancing_loss", "router_z_loss", "expert_load", "dropped_fraction")


def router_metrics(intermediates: dict) -> dict:
  """Every MoE layer's sown values (`MoeMlp`) in a model's 'intermediates', gathered:
  {"load_balancing_loss", "router_z_loss", "dropped_fraction" (capacity dispatch): means
  over the layers; "expert_load": [layers, E]}; {} for a model without experts. Layers under
  scan_layers are counted one by one."""
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    names = [str(getattr(k, "key", "")) for k in path]
    name = next((n for n in reversed(names) if n in SOWN), None)
    if name is not None:
      found.setdefault(name, []).append(leaf)
  out = {name: jnp.mean(jnp.concatenate([jnp.ravel(x) for x in leaves]))
         for name, leaves in found.items() if name != "expert_load"}
  if "expert_load" in found:
    out["expert_load"] = jnp.concatenate(
        [x.reshape(-1, x.shape[-1]) for x in found["expert_load"]])
  return out


class _ExpertWeights(nn.Module):
  """The experts' stacked weights: gate, fc1 (up) [E, width, F] and fc2 (down) [E, F, width]."""
  num_experts: int
  width: int
  hidden: int
  dtype: object
  param_dtype: object

  @nn.compact
  def __call__(self):
    init = default_kernel_init
    shapes = {"gate": (self.num_experts, self.width, self.hidden),
              "fc1": (self.num_experts, self.width, self.hidden),
              "fc2": (self.num_experts, self.hidden, self.width)}
    return tuple(self.param(name, init, shape, self.param_dtype).astype(self.dtype)
                 for name, shape in shapes.items())


class MoeMlp(nn.Module):
  """x [..., width] -> [..., width] through the config's mixture of experts (see the module
  docstring; `TransformerConfig.num_experts`). Parameters: router [width, E] (computed in
  float32), experts/{gate, fc1, fc2}. Sows into 'intermediates': load_balancing_loss,
  router_z_loss, expert_load (the fraction of assignments each expert got, [E]) and, with
  capacity dispatch, dropped_fraction."""
  config: object  # TransformerConfig (layers.config imports nothing from here)

  @nn.compact
  def __call__(self, x):
    c = self.config
    if c.lora is not None and {"fc1", "gate", "fc2"} & set(c.lora.targets):
      raise ValueError(f"LoRA targets {c.lora.targets} name MLP projections, which a "
                       "mixture of experts holds per expert; adapt attention's here.")
    shape = x.shape
    tokens = x.reshape(-1, shape[-1])
    logits = nn.Dense(c.num_experts, use_bias=False, dtype=jnp.float32,
                      param_dtype=c.param_dtype, kernel_init=default_kernel_init,
                      name="router")(tokens.astype(jnp.float32))
    weights, experts, probabilities = route(logits, c.experts_per_token, c.norm_topk_prob)
    gate, up, down = _ExpertWeights(c.num_experts, shape[-1], c.expert_mlp_dim or c.mlp_dim,
                                    c.dtype, c.param_dtype, name=EXPERTS)()
    tokens = tokens.astype(c.dtype)
    if c.moe_dispatch == "dropless":
      out = dropless(tokens, weights, experts, gate, up, down, c.activation)
    else:
      out, dropped = with_capacity(tokens, weights, experts, gate, up, down, c.activation,
                                   c.capacity_factor)
      self.sow("intermediates", "dropped_fraction", dropped)
    self.sow("intermediates", "load_balancing_loss",
             load_balancing_loss(probabilities, experts, c.num_experts))
    self.sow("intermediates", "router_z_loss", router_z_loss(logits))
    self.sow("intermediates", "expert_load", jnp.mean(
        jax.nn.one_hot(experts, c.num_experts, dtype=jnp.float32), axis=(0, 1)))
    return out.reshape(shape)
