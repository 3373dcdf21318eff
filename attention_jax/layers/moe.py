"""A mixture-of-experts MLP (Mixtral, Qwen-MoE, DeepSeek-V2/V3): pure functions for routing
and the two dispatches, a dense reference, DeepSeek-V3's bias rule, and the module that holds
the weights.

Each token's float32 router logits pick experts_per_token (k) of num_experts (E) gated
experts, act(x W_gate) * (x W_up) W_down, whose outputs are summed with the router's scores:
softmax probabilities (Mixtral, Qwen, DeepSeek-V2) or sigmoids (DeepSeek-V3), renormalised
over the k chosen when `normalize`, times a scaling factor; optionally chosen only within the
best groups of experts, and with a correction bias that chooses but does not weight (`route`).
Shared experts, a dense SwiGLU every token takes, are added by the module. Dispatch:

  dropless: the N·k (token, expert) assignments sorted by expert and run as three grouped
    matmuls (`layers.grouped_matmul`'s blocks, or `jax.lax.ragged_dot`), so no token is
    dropped and no expert computes another's tokens;
  capacity: each expert takes at most C = ceil(capacity_factor · N·k / E) assignments into a
    fixed [E, C, width] buffer, first choices of every token before second ones (GShard's
    priority), each choice in token order; the others are dropped (their weight lost) and
    counted.

`dense_reference` runs every expert on every token and masks: the tests' ground truth.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.layers import expert_parallel, grouped_matmul
from attention_jax.layers.attention import default_kernel_init
from attention_jax.layers.mlp import Mlp, activation_fn

EXPERTS = "experts"  # the module holding the stacked expert weights gate, fc1 (up), fc2 (down)


def route(logits, k: int, normalize: bool, *, scoring: str = "softmax",
          correction_bias=None, n_group: int | None = None, topk_group: int | None = None,
          scaling: float = 1.0):
  """(weights float32 [N, k], experts int32 [N, k], probabilities float32 [N, E]) from
  router logits [N, E]: each token's k best-scoring experts.

  scoring: "softmax" (Mixtral, Qwen, DeepSeek-V2) or "sigmoid" (DeepSeek-V3) of the logits.
  correction_bias [E] (DeepSeek-V3's e_score_correction_bias) is added to the scores to
  *choose* experts, never to weight them. n_group, topk_group: group-limited top-k, the k
  chosen only from the topk_group groups (of E / n_group consecutive experts) with the best
  group scores: each group's two best scores summed with a correction bias (V3), its best
  score without one (V2). The chosen scores, renormalised to sum 1 when `normalize`, times
  `scaling` (routed_scaling_factor), are the weights. `probabilities` are the scores
  normalised per token, what the load-balancing loss reads."""
  logits = logits.astype(jnp.float32)
  if scoring == "softmax":
    scores = jax.nn.softmax(logits, axis=-1)
    probabilities = scores
  else:
    scores = jax.nn.sigmoid(logits)
    probabilities = scores / jnp.sum(scores, axis=-1, keepdims=True)
  choice = scores if correction_bias is None else (
      scores + lax.stop_gradient(correction_bias.astype(jnp.float32)))
  if n_group is not None and n_group > 1:
    n, num_experts = choice.shape
    grouped = choice.reshape(n, n_group, num_experts // n_group)
    group_scores = (jnp.max(grouped, axis=-1) if correction_bias is None
                    else jnp.sum(lax.top_k(grouped, 2)[0], axis=-1))
    groups = lax.top_k(group_scores, topk_group)[1]
    allowed = jnp.any(groups[..., None] == jnp.arange(n_group), axis=-2)  # [N, n_group]
    choice = jnp.where(jnp.repeat(allowed, num_experts // n_group, axis=-1), choice,
                       -jnp.inf)
  experts = lax.top_k(choice, k)[1]
  weights = jnp.take_along_axis(scores, experts, axis=-1)
  if normalize:
    weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
  return weights * scaling, experts.astype(jnp.int32), probabilities


def clamped_swiglu(limit: float, alpha: float):
  """GPT-OSS's gated activation of (gate, up): gate clamped above at `limit`, up to
  [-limit, limit], (up + 1) · gate · sigmoid(alpha · gate)."""
  def glu(gate, up):
    gate = jnp.minimum(gate, limit)
    return (jnp.clip(up, -limit, limit) + 1) * gate * jax.nn.sigmoid(alpha * gate)
  return glu


def _glu(x, gate, up, activation):
  """activation: a name (act(gate) · up) or a function of (gate, up) (`clamped_swiglu`)."""
  if callable(activation):
    return activation(gate(x), up(x))
  return activation_fn(activation)(gate(x)) * up(x)


def _bias(biases, i: int, rows=None):
  """The i-th of the experts' biases (gate, up, down; [E, width]) for rows of these experts
  (or every expert, broadcast over [E, rows, width]); 0 without biases."""
  if biases is None:
    return 0.0
  return biases[i][rows] if rows is not None else biases[i][:, None, :]


def dense_reference(tokens, weights, experts, gate, up, down, activation, biases=None):
  """Every expert on every token, masked to the chosen ones: tokens [N, d], weights and
  experts [N, k], gate/up [E, d, F], down [E, F, d], biases (gate [E, F], up [E, F], down
  [E, d]) or None; activation a name or a function of (gate, up) -> [N, d]."""
  n, num_experts = tokens.shape[0], gate.shape[0]
  combine = jnp.zeros((n, num_experts), jnp.float32).at[
      jnp.arange(n)[:, None], experts].add(weights)
  hidden = _glu(tokens, lambda x: jnp.einsum("nd,edf->enf", x, gate) + _bias(biases, 0),
                lambda x: jnp.einsum("nd,edf->enf", x, up) + _bias(biases, 1), activation)
  outputs = jnp.einsum("enf,efd->end", hidden, down) + _bias(biases, 2)
  return jnp.einsum("ne,end->nd", combine.astype(outputs.dtype), outputs)


def dropless(tokens, weights, experts, gate, up, down, activation, biases=None,
             matmul: str = "blocked", block: int = 128, expert_axis: str | None = None):
  """The chosen experts only, every assignment kept: sorted by expert, grouped matmuls,
  `matmul` "blocked" (`layers.grouped_matmul`, blocks of `block` rows, never dense) or
  "ragged_dot" (`jax.lax.ragged_dot`, which XLA:CPU computes densely). Assignments to an
  expert >= E contribute nothing. Other arguments as `dense_reference`.

  expert_axis: inside `shard_map`, the mesh axis the experts are split over (gate, up,
  down and biases are this device's E / ep, tokens its own): the axis's tokens and routes
  are gathered, each device runs its experts on what they were given, and the outputs are
  summed back to their tokens' devices (Megatron's all-gather dispatcher)."""
  if expert_axis is not None:
    gather = lambda x: lax.all_gather(x, expert_axis, tiled=True)
    held = gate.shape[0]
    owned = gather(experts) - lax.axis_index(expert_axis) * held
    owned = jnp.where((owned >= 0) & (owned < held), owned, held)  # held: elsewhere
    block = grouped_matmul.block_size(experts.size, held, block)  # the rows expected here
    out = dropless(gather(tokens), gather(weights), owned, gate, up, down, activation,
                   biases, matmul, block)
    return lax.psum_scatter(out, expert_axis, scatter_dimension=0, tiled=True)
  n, k = experts.shape
  num_experts = gate.shape[0]
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)  # assignments grouped by expert, tokens in order
  source, rows = order // k, jnp.minimum(flat[order], num_experts - 1)
  sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)  # >= E not counted
  scale = jnp.where(flat[order] < num_experts, weights.reshape(-1)[order], 0.0)[:, None]
  if matmul == "ragged_dot":
    grouped = lambda w, i: lambda x: lax.ragged_dot(x, w, sizes) + _bias(biases, i, rows)
    hidden = _glu(tokens[source], grouped(gate, 0), grouped(up, 1), activation)
    outputs = grouped(down, 2)(hidden)  # rows past the groups (held elsewhere): undefined
    outputs = jnp.where((flat[order] < num_experts)[:, None], outputs, 0)
  else:
    layout = grouped_matmul.block_layout(
        sizes, n * k, grouped_matmul.block_size(n * k, num_experts, block))
    block_bias = lambda i: (0.0 if biases is None
                            else _bias(biases, i, layout.block_group)[:, None, :])
    grouped = lambda w, i: lambda x: (grouped_matmul.grouped_matmul(x, w, layout)
                                      + block_bias(i))
    hidden = _glu(grouped_matmul.to_blocks(tokens[source], layout), grouped(gate, 0),
                  grouped(up, 1), activation)
    outputs = grouped_matmul.from_blocks(grouped(down, 2)(hidden), layout)
  return jnp.zeros_like(tokens).at[source].add(outputs * scale.astype(outputs.dtype))


def capacity_slots(experts, num_experts: int, capacity: int):
  """(slot [N, k] of each assignment in its expert's buffer, kept [N, k]): first choices of
  all tokens before second ones, each in token order; a slot >= capacity is dropped."""
  n, k = experts.shape
  priority = experts.T.reshape(-1)  # choice-major: all first choices, then the seconds
  one_hot = jax.nn.one_hot(priority, num_experts, dtype=jnp.int32)
  slot = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)
  slot = slot.reshape(k, n).T
  return slot, slot < capacity


def capacity_per_expert(num_tokens: int, k: int, num_experts: int,
                        capacity_factor: float) -> int:
  """Each expert's buffer: ceil(capacity_factor · N·k / E) slots, at least 1."""
  return max(1, math.ceil(capacity_factor * num_tokens * k / num_experts))


def fill_buffers(tokens, experts, num_experts: int, capacity: int):
  """(buffers [E, C, d] of each expert's tokens in slot order (empty slots zero), slot,
  kept [N, k] as `capacity_slots`)."""
  n, k = experts.shape
  slot, kept = capacity_slots(experts, num_experts, capacity)
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k))
  buffers = jnp.zeros((num_experts, capacity, tokens.shape[-1]), tokens.dtype).at[
      experts, slot].set(tokens[rows], mode="drop")  # dropped slots are out of bounds
  return buffers, slot, kept


def run_experts(buffers, gate, up, down, activation, biases=None):
  """Each expert on its own buffer: [E, C, d] -> [E, C, d]."""
  hidden = _glu(buffers, lambda x: jnp.einsum("ecd,edf->ecf", x, gate) + _bias(biases, 0),
                lambda x: jnp.einsum("ecd,edf->ecf", x, up) + _bias(biases, 1), activation)
  return jnp.einsum("ecf,efd->ecd", hidden, down) + _bias(biases, 2)


def combine_buffers(outputs, weights, experts, slot, kept):
  """[N, d]: each token's kept assignments' outputs (from [E, C, d]) times their weights."""
  taken = outputs.at[experts, jnp.minimum(slot, outputs.shape[1] - 1)].get()  # [N, k, d]
  scale = jnp.where(kept, weights, 0.0).astype(taken.dtype)
  return jnp.einsum("nk,nkd->nd", scale, taken)


def with_capacity(tokens, weights, experts, gate, up, down, activation,
                  capacity_factor: float, biases=None, expert_axis: str | None = None):
  """(outputs [N, d], fraction of assignments dropped): at most ceil(capacity_factor·N·k/E)
  per expert (`capacity_slots`). Arguments as `dense_reference`.

  expert_axis: inside `shard_map`, the mesh axis the experts are split over (the weights
  are this device's E / ep experts, tokens its own): each device fills buffers for all E
  experts from its own tokens (so capacity counts per device), `all_to_all` gives every
  device its experts' slots from all devices, and a second brings the outputs home
  (GShard)."""
  shards = 1 if expert_axis is None else lax.axis_size(expert_axis)
  held = gate.shape[0]
  num_experts = held * shards
  slots = capacity_per_expert(*experts.shape, num_experts, capacity_factor)
  buffers, slot, kept = fill_buffers(tokens, experts, num_experts, slots)
  if expert_axis is not None:  # [E, C, d] -> this device's experts' [held, shards · C, d]
    buffers = lax.all_to_all(buffers.reshape(shards, held, slots, -1), expert_axis, 0, 0)
    buffers = buffers.swapaxes(0, 1).reshape(held, shards * slots, -1)
  outputs = run_experts(buffers, gate, up, down, activation, biases)
  if expert_axis is not None:  # and back: [E, C, d] of this device's tokens
    outputs = outputs.reshape(held, shards, slots, -1).swapaxes(0, 1)
    outputs = lax.all_to_all(outputs, expert_axis, 0, 0).reshape(num_experts, slots, -1)
  return (combine_buffers(outputs, weights, experts, slot, kept),
          1.0 - jnp.mean(kept.astype(jnp.float32)))


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
  """The experts' stacked weights: (gate, fc1 (up) [E, width, F], fc2 (down) [E, F, width]),
  and with `use_bias` their biases (gate_bias, fc1_bias [E, F], fc2_bias [E, width]) else
  None."""
  num_experts: int
  width: int
  hidden: int
  use_bias: bool
  dtype: object
  param_dtype: object

  @nn.compact
  def __call__(self):
    shapes = {"gate": (self.width, self.hidden), "fc1": (self.width, self.hidden),
              "fc2": (self.hidden, self.width)}
    make = lambda name, init, shape: self.param(name, init, (self.num_experts,) + shape,
                                                self.param_dtype).astype(self.dtype)
    kernels = tuple(make(name, default_kernel_init, shape) for name, shape in shapes.items())
    if not self.use_bias:
      return kernels, None
    return kernels, tuple(make(f"{name}_bias", nn.initializers.zeros, shape[-1:])
                          for name, shape in shapes.items())


CORRECTION_BIAS = "e_score_correction_bias"  # DeepSeek-V3's, a direct parameter of MoeMlp


def correction_bias_update(bias, expert_load, rate: float):
  """DeepSeek-V3's auxiliary-loss-free balancing, applied after each step outside the
  optimizer: each expert's bias [..., E] rises by `rate` when its share of the step's
  assignments `expert_load` [..., E] is below the mean, and falls by `rate` when above
  (within 1e-6 of the mean it stays: the same load summed over micro-batches rounds
  differently)."""
  load = expert_load.astype(jnp.float32)
  below = jnp.mean(load, axis=-1, keepdims=True) - load
  return bias + rate * jnp.where(jnp.abs(below) > 1e-6, jnp.sign(below), 0.0)


def update_correction_biases(params: dict, expert_loads: dict, rate: float,
                             before: dict | None = None) -> dict:
  """`params` with every MoE layer's correction bias moved by `correction_bias_update` from
  that layer's load in `expert_loads` ({module path: [E] or, stacked, [layers, E]}, as
  `expert_loads` gathers them). `before`: the parameters the step started from (same
  structure); each bias moves from its value there, so nothing an optimizer did to it
  counts."""
  def update(path, leaf, old):
    names = [str(getattr(key, "key", "")) for key in path]
    if names[-1] != CORRECTION_BIAS:
      return leaf
    return correction_bias_update(old, expert_loads["/".join(names[:-1])],
                                  rate).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(update, params,
                                          params if before is None else before)


def expert_loads(intermediates: dict) -> dict:
  """{module path: expert_load} of every MoE layer sown in a model's 'intermediates' (the
  path of its parameters; [E], or [layers, E] under scan_layers)."""
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    names = [str(getattr(key, "key", "")) for key in path]
    if "expert_load" in names:
      found["/".join(names[:names.index("expert_load")])] = leaf
  return found


def unchosen_expert_params(config) -> int:
  """Parameters of the routed experts a token does not choose, over all MoE layers
  (num_experts - experts_per_token per layer, each expert's gate, up and down projections
  and biases): total parameters less these are the active ones. 0 without experts."""
  if not config.num_experts:
    return 0
  hidden = config.expert_mlp_dim or config.mlp_dim
  expert = 3 * config.width * hidden + (2 * hidden + config.width) * config.mlp_bias
  layers = config.depth - config.first_k_dense_replace
  return layers * (config.num_experts - config.experts_per_token) * expert


def loads_by_layer(expert_loads: dict, first_stacked: int = 0) -> dict:
  """{layer: its load [E]} from `expert_loads`' {module path: [E] or [layers, E]}: the layer
  named by its block ("block_3"), a stacked one by its stack and layer index ("blocks/3"),
  the stack's rows counted from `first_stacked` (first_k_dense_replace: dense layers below
  a scanned stack)."""
  out = {}
  for path, load in expert_loads.items():
    block = path[:-len("/mlp")] if path.endswith("/mlp") else path
    if load.ndim == 1:
      out[block] = load
    else:
      out.update({f"{block}/{first_stacked + i}": row for i, row in enumerate(load)})
  return out


class MoeMlp(nn.Module):
  """x [..., width] -> [..., width] through the config's mixture of experts (see the module
  docstring; `TransformerConfig.num_experts`). Parameters: router [width, E] (computed in
  float32; a bias with router_bias), experts/{gate, fc1, fc2} (and {gate, fc1, fc2}_bias
  with mlp_bias; GPT-OSS's clamped SwiGLU with swiglu_limit); with n_shared_experts a dense
  SwiGLU `shared_experts` every token takes (gated by sigmoid(x · shared_expert_gate) with
  `shared_expert_gate`, Qwen-MoE); with router_correction_bias, e_score_correction_bias [E] (no gradient: training
  moves it by `correction_bias_update`). Sows into 'intermediates': load_balancing_loss,
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
    logits = nn.Dense(c.num_experts, use_bias=c.router_bias, dtype=jnp.float32,
                      param_dtype=c.param_dtype, kernel_init=default_kernel_init,
                      name="router")(tokens.astype(jnp.float32))
    bias = (self.param(CORRECTION_BIAS, nn.initializers.zeros, (c.num_experts,), jnp.float32)
            if c.router_correction_bias else None)
    weights, experts, probabilities = route(
        logits, c.experts_per_token, c.norm_topk_prob, scoring=c.router_scoring,
        correction_bias=bias, n_group=c.n_group, topk_group=c.topk_group,
        scaling=c.routed_scaling_factor)
    expert_dim = c.expert_mlp_dim or c.mlp_dim
    (gate, up, down), biases = _ExpertWeights(c.num_experts, shape[-1], expert_dim,
                                              c.mlp_bias, c.dtype, c.param_dtype,
                                              name=EXPERTS)()
    activation = (c.activation if c.swiglu_limit is None
                  else clamped_swiglu(c.swiglu_limit, c.swiglu_alpha))
    tokens = tokens.astype(c.dtype)

    def dispatch(tokens, weights, experts, expert_params, expert_axis=None):
      (gate, up, down), biases = expert_params
      if c.moe_dispatch == "dropless":
        return dropless(tokens, weights, experts, gate, up, down, activation, biases,
                        matmul=c.grouped_matmul, expert_axis=expert_axis), 0.0
      return with_capacity(tokens, weights, experts, gate, up, down, activation,
                           c.capacity_factor, biases, expert_axis=expert_axis)

    layout = (expert_parallel.explicit_layout(jax.sharding.get_abstract_mesh(), shape)
              if c.expert_collectives == "explicit" else None)
    if layout is None:
      out, dropped = dispatch(tokens, weights, experts, ((gate, up, down), biases))
    else:
      by_token = lambda a: a.reshape(shape[:-1] + a.shape[-1:])
      out, dropped = expert_parallel.shard_over_experts(
          functools.partial(dispatch, expert_axis=expert_parallel.EXPERT_AXIS), layout,
          by_token(tokens), by_token(weights), by_token(experts),
          ((gate, up, down), biases), c.num_experts)
      out = out.reshape(tokens.shape)
    if c.moe_dispatch == "capacity":
      self.sow("intermediates", "dropped_fraction", dropped)
    if c.n_shared_experts:
      shared = Mlp(c.n_shared_experts * expert_dim, activation=c.activation, gated=True,
                   use_bias=c.mlp_bias, dtype=c.dtype, param_dtype=c.param_dtype,
                   name="shared_experts")(tokens)
      if c.shared_expert_gate:
        shared = shared * jax.nn.sigmoid(nn.Dense(
            1, use_bias=False, dtype=c.dtype, param_dtype=c.param_dtype,
            kernel_init=default_kernel_init, name="shared_expert_gate")(tokens))
      out = out + shared
    self.sow("intermediates", "load_balancing_loss",
             load_balancing_loss(probabilities, experts, c.num_experts))
    self.sow("intermediates", "router_z_loss", router_z_loss(logits))
    self.sow("intermediates", "expert_load", jnp.mean(
        jax.nn.one_hot(experts, c.num_experts, dtype=jnp.float32), axis=(0, 1)))
    return out.reshape(shape)
