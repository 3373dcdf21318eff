"""The two parameter layouts of a stack of blocks, conversion between them, and the layer
groups each model declares (what fine-tuning freezes, decays and adapts).

Unrolled (`scan_layers=False`): one subtree per block, named `<prefix><i>` (`block_0`, ...;
BERT's `blocks_0`, ...; the encoder-decoder's `encoder_blocks_0`, `decoder_blocks_0`, ...).
Stacked (`scan_layers=True`): one subtree per stack, "blocks" (or `encoder_blocks`,
`decoder_blocks`), whose arrays have a leading `layers` axis (nn.scan). With mixed
`layer_types` of period p the stack holds groups: "blocks/layer_<j>" has layers j, j + p,
j + 2p, ... along its leading axis, and the depth % p layers above the last whole group stay
unrolled (`block_<i>`). A config's first_k_dense_replace layers (DeepSeek's dense ones) stay
unrolled below the stack, which starts at layer k. Checkpoints, Hugging Face conversion and
fine-tuning read either:
`to_layout` converts a parameter tree to the layout of a target.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.layers.config import with_options
from attention_jax.layers.partitioning import GROUP_MEMBER, STACKED, is_stack

_INDEXED = re.compile(r"^(.*?)(\d+)$")
_SINGLE_PREFIXES = ("block_", "blocks_")  # the unrolled names of a model's only stack


@dataclasses.dataclass(frozen=True)
class LayerGroups:
  """A model's layers by top-level parameter name, as the model declares them.

  below: under every block (embeddings); blocks: the unrolled blocks, bottom to top (when
  stacked, only those above a grouped stack's last whole group); block_layers: each one's
  layer index from the bottom; stacks: the stacked blocks as (name, first layer, number of
  layers, period of its groups), bottom to top (empty when unrolled); depth: number of
  blocks; above: on top of the blocks and trained with them (final norm, untied LM head);
  projections: the LoRA-targetable projections inside the blocks.
  """
  below: tuple[str, ...]
  blocks: tuple[str, ...]
  block_layers: tuple[int, ...]
  stacks: tuple[tuple[str, int, int, int], ...]
  depth: int
  above: tuple[str, ...]
  projections: frozenset[str]

  @classmethod
  def of(cls, config, below: tuple[str, ...], above: tuple[str, ...] = (),
         prefixes: tuple[tuple[str, int], ...] | None = None) -> "LayerGroups":
    """The groups of a model built from `config`: blocks named `<prefix><i>` for each
    (prefix, count) in `prefixes` (default: "block_", config.depth), or stacked."""
    prefixes = prefixes or (("block_", config.depth),)
    period = config.layer_period()
    blocks, layers, stacks, first = [], [], [], 0
    head = config.first_k_dense_replace if config.scan_layers else 0  # unrolled below
    for prefix, count in prefixes:
      scanned = (count - head) // period * period if config.scan_layers else 0
      if scanned:
        stacks.append((stack_name(prefix), first + head, scanned, period))
      unrolled = [*range(head), *range(head + scanned, count)] if scanned else range(count)
      blocks += [f"{prefix}{i}" for i in unrolled]
      layers += [first + i for i in unrolled]
      first += count
    projections = {"query", "key", "value", "out", "fc1", "fc2"} | (
        {"gate"} if config.gated_mlp else set())
    return cls(tuple(below), tuple(blocks), tuple(layers), tuple(stacks), first,
               tuple(above), frozenset(projections))

  def block_index(self, name: str) -> int | None:
    """Index (from the bottom) of the unrolled block named `name`, else None."""
    return self.block_layers[self.blocks.index(name)] if name in self.blocks else None

  def stack_layers(self, path: tuple[str, ...]) -> np.ndarray | None:
    """Indices (from the bottom, over all blocks) of the layers that the parameter at `path`
    holds along its leading axis when it lies in a stack (a grouped stack's `layer_<j>`:
    layers j, j + period, ...), else None."""
    for stack, first, count, period in self.stacks:
      if path[0] == stack:
        layers = np.arange(first, first + count)
        return layers if period == 1 else layers[int(path[1][len(GROUP_MEMBER):])::period]
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


def group_period(stacked: dict) -> int:
  """The period of a stack's repeating groups (the number of its `layer_<j>`), 1 for a
  stack of single blocks."""
  names = list(stacked)
  grouped = names and all(n.startswith(GROUP_MEMBER) and n[len(GROUP_MEMBER):].isdigit()
                          for n in names)
  return len(names) if grouped else 1


def stack(params: dict, period: int = 1, first: int = 0) -> dict:
  """Unrolled -> stacked: each `<prefix>first .. <prefix>{L-1}` becomes one module
  (`stack_name`) whose arrays have a leading axis, the `first` below left unrolled (the
  config's first_k_dense_replace); with `period` > 1 (the config's `layer_period()`), one
  `layer_<j>` per position in the period, over the whole groups, the rest left unrolled."""
  for prefix in block_prefixes(params):
    names = sorted((n for n in params if n.startswith(prefix) and n[len(prefix):].isdigit()),
                   key=lambda n: int(n[len(prefix):]))[first:]
    names = names[:len(names) // period * period]
    if not names:  # every block stays unrolled (first_k_dense_replace = depth)
      continue
    stack_of = lambda group: jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in group])
    stacked = stack_of(names) if period == 1 else {
        f"{GROUP_MEMBER}{j}": stack_of(names[j::period]) for j in range(period)}
    params = {**{k: v for k, v in params.items() if k not in names},
              stack_name(prefix): stacked}
  return params


def unstack(params: dict, prefix: str) -> dict:
  """Stacked -> unrolled: "blocks" becomes `<prefix><i>`, "<group>_blocks" becomes
  `<group>_blocks_<i>` (a grouped stack's `layer_<j>` of group g is layer g * period + j)."""
  for name in [n for n in params if is_stack(n)]:
    stacked, period = params[name], group_period(params[name])
    groups = jax.tree.leaves(stacked)[0].shape[0]
    unrolled_prefix = prefix if name == STACKED else name + "_"
    head = _unrolled_below(params, unrolled_prefix)
    member = (lambda i: stacked) if period == 1 else (
        lambda i: stacked[f"{GROUP_MEMBER}{i % period}"])
    params = {**{k: v for k, v in params.items() if k != name},
              **{f"{unrolled_prefix}{head + i}": jax.tree.map(lambda x, i=i: x[i // period],
                                                              member(i))
                 for i in range(groups * period)}}
  return params


def _unrolled_below(params: dict, prefix: str) -> int:
  """How many blocks `<prefix>0, <prefix>1, ...` lie unrolled below a stack in `params`
  (a config's first_k_dense_replace; 0 when the stack starts at the bottom)."""
  count = 0
  while f"{prefix}{count}" in params:
    count += 1
  return count


def to_layout(params: dict, like: dict, prefix: str = "block_") -> dict:
  """`params` in the layout of `like` (a parameter tree or its shapes); `prefix` names
  unrolled blocks when `params` is stacked and `like` is not (default: `like`'s own)."""
  if is_stacked(like) and not is_stacked(params):
    head = max((_unrolled_below(like, p) for p in block_prefixes(like)), default=0)
    return stack(params, max(group_period(v) for k, v in like.items() if is_stack(k)), head)
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
