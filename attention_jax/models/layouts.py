"""The two parameter layouts of a stack of blocks, conversion between them, and the layer
groups each model declares (what fine-tuning freezes, decays and adapts).

Unrolled (`scan_layers=False`): one subtree per block, named `<prefix><i>` (`block_0`, ...;
BERT's `blocks_0`, ...). Stacked (`scan_layers=True`): one subtree named "blocks" whose
arrays have a leading `layers` axis (nn.scan). Checkpoints, Hugging Face conversion and
fine-tuning read either: `to_layout` converts a parameter tree to the layout of a target.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from attention_jax.layers.config import with_options
from attention_jax.layers.partitioning import STACKED

_INDEXED = re.compile(r"^(.*?)(\d+)$")


@dataclasses.dataclass(frozen=True)
class LayerGroups:
  """A model's layers by top-level parameter name, as the model declares them.

  below: under every block (embeddings); blocks: the unrolled blocks, bottom to top (empty
  when stacked); stacked: the stacked blocks' name (None when unrolled); depth: number of
  blocks; above: on top of the blocks and trained with them (final norm, untied LM head);
  projections: the LoRA-targetable projections inside the blocks.
  """
  below: tuple[str, ...]
  blocks: tuple[str, ...]
  stacked: str | None
  depth: int
  above: tuple[str, ...]
  projections: frozenset[str]

  @classmethod
  def of(cls, config, below: tuple[str, ...], above: tuple[str, ...] = (),
         prefixes: tuple[tuple[str, int], ...] | None = None) -> "LayerGroups":
    """The groups of a model built from `config`: blocks named `<prefix><i>` for each
    (prefix, count) in `prefixes` (default: "block_", config.depth), or stacked."""
    prefixes = prefixes or (("block_", config.depth),)
    depth = sum(count for _, count in prefixes)
    blocks = () if config.scan_layers else tuple(
        f"{prefix}{i}" for prefix, count in prefixes for i in range(count))
    projections = {"query", "key", "value", "out", "fc1", "fc2"} | (
        {"gate"} if config.gated_mlp else set())
    return cls(tuple(below), blocks, STACKED if config.scan_layers else None, depth,
               tuple(above), frozenset(projections))

  def block_index(self, name: str) -> int | None:
    """Index (from the bottom) of the unrolled block named `name`, else None."""
    return self.blocks.index(name) if name in self.blocks else None


def is_stacked(params: dict) -> bool:
  return isinstance(params, dict) and STACKED in params


def block_prefix(params: dict) -> str | None:
  """The unrolled blocks' name prefix ("block_" or "blocks_") in `params`, if any."""
  for name in params:
    match = _INDEXED.match(name)
    if match and match.group(1) in ("block_", "blocks_"):
      return match.group(1)
  return None


def stack(params: dict) -> dict:
  """Unrolled -> stacked: `<prefix>0 .. <prefix>{L-1}` become "blocks" with a leading axis."""
  prefix = block_prefix(params)
  if prefix is None:
    return params
  names = sorted((n for n in params if n.startswith(prefix) and n[len(prefix):].isdigit()),
                 key=lambda n: int(n[len(prefix):]))
  blocks = [params[n] for n in names]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  rest = {k: v for k, v in params.items() if k not in names}
  return {**rest, STACKED: stacked}


def unstack(params: dict, prefix: str) -> dict:
  """Stacked -> unrolled blocks named `<prefix><i>`."""
  if not is_stacked(params):
    return params
  stacked = params[STACKED]
  depth = jax.tree.leaves(stacked)[0].shape[0]
  rest = {k: v for k, v in params.items() if k != STACKED}
  return {**rest, **{f"{prefix}{i}": jax.tree.map(lambda x, i=i: x[i], stacked)
                     for i in range(depth)}}


def to_layout(params: dict, like: dict, prefix: str = "block_") -> dict:
  """`params` in the layout of `like` (a parameter tree or its shapes); `prefix` names
  unrolled blocks when `params` is stacked and `like` is not (default: `like`'s own)."""
  if is_stacked(like) and not is_stacked(params):
    return stack(params)
  if is_stacked(params) and not is_stacked(like):
    return unstack(params, block_prefix(like) or prefix)
  return params


def unrolled(model, params: dict):
  """(model, params) with the blocks unrolled: what code written for `block_<i>` names
  (Hugging Face conversion) reads. A model without stacked blocks is returned as is."""
  if not model.config.scan_layers:
    return model, params
  model = with_options(model, scan_layers=False)
  method = {"method": model.pretrain} if "mlm_head" in params else {}
  like = jax.eval_shape(lambda: model.init(jax.random.key(0), *model.example_inputs(),
                                           **method))["params"]
  return model, to_layout(params, like)
