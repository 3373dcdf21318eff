"""Expert parallelism by explicit collectives: a mixture of experts' dispatch run in
`jax.shard_map` when the mesh in context (`jax.set_mesh`, as the trainer sets it) has an
`expert` axis of size > 1 (`TransformerConfig.expert_collectives="explicit"`).

Tokens [B, T, d] stay split as the trainer splits a batch (B over data, fsdp and expert, T
over sequence); each device holds E / ep of the experts, whose weights are gathered over
fsdp and tensor at the call (they are FSDP-split on embed and tensor-split on mlp). The
exchange itself is the dispatch's (`layers.moe`, with `expert_axis`): capacity sends each
expert's slots to its device and back with `all_to_all` (GShard); dropless gathers the
expert axis's tokens and routes, and sums each token's outputs back with `psum_scatter`.
With "compiler", the same global program is left to XLA's SPMD partitioner.
"""

from __future__ import annotations

import math

from absl import logging
import jax
from jax import lax
from jax.sharding import PartitionSpec as P

EXPERT_AXIS = "expert"
BATCH_AXES = ("data", "fsdp", "expert")  # the trainer's rule for `batch`
LENGTH_AXIS = "sequence"


def token_layout(mesh, shape) -> P | None:
  """How tokens [B, T, ...] (or [B, ...]) are split for the explicit dispatch on `mesh`, or
  None when it does not apply: no `expert` axis of size > 1, or B not divisible by the
  product of the batch axes (then XLA partitions the dispatch)."""
  if mesh.empty or mesh.shape.get(EXPERT_AXIS, 1) == 1:
    return None
  batch = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
  if shape[0] % math.prod(mesh.shape[a] for a in batch):
    return None
  length = (LENGTH_AXIS if len(shape) > 2 and mesh.shape.get(LENGTH_AXIS, 1) > 1
            and shape[1] % mesh.shape[LENGTH_AXIS] == 0 else None)
  return P(batch, *([length] if len(shape) > 2 else []), *([None] * (len(shape) - 2)))


def explicit_layout(mesh, shape) -> P | None:
  """`token_layout`, warning (once) when the mesh has an expert axis but the tokens cannot be
  split for the explicit dispatch: XLA then partitions it, and capacity counts over the whole
  batch rather than per device."""
  layout = token_layout(mesh, shape)
  if layout is None and not mesh.empty and mesh.shape.get(EXPERT_AXIS, 1) > 1:
    logging.log_first_n(
        logging.WARNING, "a batch of %s tokens does not split over the mesh's batch axes "
        "%s: this mixture-of-experts layer is dispatched by XLA's partitioner, with capacity "
        "counted over the whole batch", 1, shape[:-1],
        {a: mesh.shape.get(a, 1) for a in BATCH_AXES})
  return layout


def shard_over_experts(local_dispatch, layout: P, tokens, weights, experts, expert_params,
                       num_experts: int):
  """(outputs like tokens, a scalar averaged over the devices) from
  local_dispatch(tokens [n, d], weights [n, k], experts [n, k], expert_params) -> (outputs
  [n, d], scalar), run on each device's n tokens and its E / ep experts (expert_params: a
  pytree of arrays whose leading axis is the experts'). tokens [B, (T,) d], weights and
  experts [B, (T,) k], split by `layout` (`token_layout`)."""
  mesh = jax.sharding.get_abstract_mesh()
  shards = mesh.shape[EXPERT_AXIS]
  if num_experts % shards:
    raise ValueError(f"num_experts={num_experts} cannot be split over the mesh's "
                     f"expert={shards} devices; use an expert axis that divides it.")
  token_axes = tuple(a for part in layout if part
                     for a in (part if isinstance(part, tuple) else (part,)))

  def local(tokens, weights, experts, expert_params):
    flat = lambda a: a.reshape(-1, a.shape[-1])
    out, scalar = local_dispatch(flat(tokens), flat(weights), flat(experts), expert_params)
    return out.reshape(tokens.shape), lax.pmean(scalar, token_axes)

  expert_specs = jax.tree.map(lambda a: P(EXPERT_AXIS, *([None] * (a.ndim - 1))),
                              expert_params)
  return jax.shard_map(local, in_specs=(layout, layout, layout, expert_specs),
                       out_specs=(layout, P()), check_vma=False)(
                           tokens, weights, experts, expert_params)
