"""The two parameter layouts of a stack of blocks, conversion between them, and the layer
groups each model declares (what fine-tuning freezes, decays and adapts).

Unrolled (`scan_layers=False`): one subtree per block, named `<prefix><i>` (`block_0`, ...;
BERT's `blocks_0`, ...; the encoder-decoder's `encoder_blocks_0`, `decoder_blocks_0`, ...).
Stacked (`scan_layers=True`): one subtree per stack, "blocks" (or `encoder_blocks`,
`decoder_blocks`), whose arrays have a leading `layers` axis (nn.scan). Checkpoints, Hugging
Face conversion and fine-tuning read either: `to_layout` converts a parameter tree to the layout
of a target.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.layers.config import with_options
from attention_jax.layers.partitioning import STACKED, is_stack

_INDEXED = re.compile(r"^(.*?)(\d+)$")
_SINGLE_PREFIXES = ("block_", "blocks_")  # the unrolled names of a model's only stack


@dataclasses.dataclass(frozen=True)
class LayerGroups:
  """A model's layers by top-level parameter name, as the model declares them.

  below: under every block (embeddings); blocks: the unrolled blocks, bottom to top (empty
  when stacked); stacks: the stacked blocks as (name, number of layers), bottom to top
  (empty when unrolled); depth: number of blocks; above: on top of the blocks and trained
  with them (final norm, untied LM head); projections: the LoRA-targetable projections
  inside the blocks.
  """
  below: tuple[str, ...]
  blocks: tuple[str, ...]
  stacks: tuple[tuple[str, int], ...]
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
    stacks = (tuple((stack_name(prefix), count) for prefix, count in prefixes)
              if config.scan_layers else ())
    projections = {"query", "key", "value", "out", "fc1", "fc2"} | (
        {"gate"} if config.gated_mlp else set())
    return cls(tuple(below), blocks, stacks, depth, tuple(above), frozenset(projections))

  def block_index(self, name: str) -> int | None:
    """Index (from the bottom) of the unrolled block named `name`, else None."""
    return self.blocks.index(name) if name in self.blocks else None

  def stack_layers(self, name: str) -> np.ndarray | None:
    """Indices (from the bottom, over all blocks) of the layers of the stack `name`."""
    offset = 0
    for stack, count in self.stacks:
      if stack == name:
        return np.arange(offset, offset + count)
      offset += count
    return None


def stack_name(prefix: str) -> str:
  """The stacked module of the blocks named `<prefix><i>`: "blocks" for a model's only stack
  (GPT's `block_<i>`, BERT's `blocks_<i>`), else the prefix without its "_"
  (`encoder_blocks_<i>` -> "encoder_blocks")."""
  return STACKED if prefix in _SINGLE_PREFIXES else prefix[:-1]


def is_stacked(params: dict) -> bool:
  return isinstance(params, dict) and any(is_stack(name) for name in params)


def block_prefixes(params: dict) -> list[str]:
  """The unrolled blocks' name prefixes in `params` ("block_", "encoder_blocks_", ...)."""
  found = []
  for name in params:
    match = _INDEXED.match(name)
    if match and match.group(1).endswith(("block_", "blocks_")) and match.group(1) not in found:
      found.append(match.group(1))
  return found


def stack(params: dict) -> dict:
  """Unrolled -> stacked: each `<prefix>0 .. <prefix>{L-1}` becomes one module (`stack_name`)
  whose arrays have a leading axis."""
  for prefix in block_prefixes(params):
    names = sorted((n for n in params if n.startswith(prefix) and n[len(prefix):].isdigit()),
                   key=lambda n: int(n[len(prefix):]))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])
    params = {**{k: v for k, v in params.items() if k not in names},
              stack_name(prefix): stacked}
  return params


def unstack(params: dict, prefix: str) -> dict:
  """Stacked -> unrolled: "blocks" becomes `<prefix><i>`, "<group>_blocks" becomes
  `<group>_blocks_<i>`."""
  for name in [n for n in params if is_stack(n)]:
    stacked = params[name]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    unrolled_prefix = prefix if name == STACKED else name + "_"
    params = {**{k: v for k, v in params.items() if k != name},
              **{f"{unrolled_prefix}{i}": jax.tree.map(lambda x, i=i: x[i], stacked)
                 for i in range(depth)}}
  return params


def to_layout(params: dict, like: dict, prefix: str = "block_") -> dict:
  """`params` in the layout of `like` (a parameter tree or its shapes); `prefix` names
  unrolled blocks when `params` is stacked and `like` is not (default: `like`'s own)."""
  if is_stacked(like) and not is_stacked(params):
    return stack(params)
  if is_stacked(params) and not is_stacked(like):
    single = [p for p in block_prefixes(like) if p in _SINGLE_PREFIXES]
    return unstack(params, single[0] if single else prefix)
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
