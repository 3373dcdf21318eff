"""Logical axis names of every parameter our layers create, in one table.

A parameter's logical axes say what each of its dimensions *means* (`embed`, `heads`, `kv`,
`mlp`, `vocab`, `layers`); the trainer's rule table (`config.mesh.rules`) then says which
mesh axis, if any, each meaning is split over. The names follow Flax's logical partitioning
and MaxText. They are looked up from the parameter's own name and its module's name, which
our layers fix (`query`, `out`, `fc1`, `token`, `*_norm`, ...), so the parameter trees stay
plain arrays that Hugging Face conversion and fine-tuning read unchanged. A parameter with
no entry is an error that names it: a new layer adds its line here (a test enumerates every
preset's parameters).

Megatron's tensor-parallel layout falls out of the names: Q/K/V and the first MLP matrix are
split by `heads` / `mlp` columns, the output and second MLP matrices by rows, the token table
and tied logits by `vocab`; `embed` is the dimension FSDP splits.
"""

from __future__ import annotations

import re

import jax
from jax.sharding import PartitionSpec

# Projections: module name -> (axes of the input side, axes of the output side) of its kernel;
# the bias has the output axes; a LoRA adapter `<name>_lora` has a [in..., rank] and
# b [rank, out...].
PROJECTIONS = {
    "query": (("embed",), ("heads", "kv")),
    "key": (("embed",), ("heads", "kv")),
    "value": (("embed",), ("heads", "kv")),
    "position": (("embed",), ("heads", "kv")),  # Transformer-XL's relative positions
    "out": (("heads", "kv"), ("embed",)),
    # MLA's latents (layers.latent_attention). The up-projections' latent side takes embed's
    # axis, so FSDP splits them too (DeepSeek-V3: 3.3B parameters, 11.6 GB a v5p device
    # held whole at fsdp=8 when it was unnamed).
    "query_down": (("embed",), (None,)),
    "query_up": (("embed",), ("heads", "kv")),
    "kv_down": (("embed",), (None,)),
    "kv_up": (("embed",), ("heads", "kv")),
    "fc1": (("embed",), ("mlp",)),
    "gate": (("embed",), ("mlp",)),
    "fc2": (("mlp",), ("embed",)),
    "pooler": (("embed",), (None,)),  # BERT
    "dense": (("embed",), (None,)),  # BERT's MLM transform
    "classifier": (("embed",), (None,)),
    "head": (("embed",), (None,)),  # ViT
    "lm_head": (("embed",), ("vocab",)),  # an untied output projection (Llama)
    "router": (("embed",), (None,)),  # a mixture of experts' router (layers.moe)
    "shared_expert_gate": (("embed",), (None,)),  # Qwen-MoE's gate on the shared experts
    "cluster": (("embed",), (None,)),  # Transformer-XL's adaptive softmax clusters
    "projection": ((None, None, None), ("embed",)),  # ViT's patch convolution
    "conv1": ((None, None), ("embed",)),  # Whisper's convolutions over the mel frames
    "conv2": ((None, None), ("embed",)),
}
EMBEDDINGS = {"token": ("vocab", "embed"), "position": (None, "embed"),
              "token_type": (None, "embed")}
# The stacked weights of a mixture's experts (layers.moe.EXPERTS): name -> axes.
EXPERT_WEIGHTS = {"gate": ("expert", "embed", "mlp"), "fc1": ("expert", "embed", "mlp"),
                  "fc2": ("expert", "mlp", "embed"), "gate_bias": ("expert", "mlp"),
                  "fc1_bias": ("expert", "mlp"), "fc2_bias": ("expert", "embed")}
# Parameters that are their own module's direct children: name -> axes.
DIRECT = {
    "content_bias": ("heads", "kv"), "position_bias": ("heads", "kv"),  # Transformer-XL
    "out_bias": ("vocab",),
    "e_score_correction_bias": (None,),  # DeepSeek-V3's router bias (layers.moe)
    "sinks": ("heads",),  # learned attention sinks, one per head (GPT-OSS)
    "cls_token": (None, None, "embed"), "position_embedding": (None, None, "embed"),  # ViT
}
# Norms over a head's or a latent's width (QK-norm, MLA's latents), not the model's.
HEAD_NORMS = ("query_norm", "key_norm", "query_down_norm", "kv_down_norm")
LAYERS = "layers"  # the leading axis of blocks stacked by `scan_layers`
STACKED = "blocks"  # the module name of such a stack (layers.transformer.scanned_blocks)
# In a stack of repeating groups of blocks (mixed layer_types), the j-th block of each group:
# "blocks/layer_<j>", its arrays' leading axis over the groups.
GROUP_MEMBER = "layer_"
_INDEX = re.compile(r"_\d+$")
LORA_SUFFIX = "_lora"


def is_stack(name: str) -> bool:
  """Whether a module named `name` holds stacked blocks: "blocks", or "<group>_blocks" in a
  model with several stacks (the encoder-decoder's "encoder_blocks", "decoder_blocks")."""
  return name == STACKED or name.endswith("_" + STACKED)


def in_stack(path) -> bool:
  """Whether the leaf at pytree `path` (of a parameter or cache tree) lies in stacked blocks,
  so its leading axis is `layers`."""
  return any(is_stack(str(getattr(key, "key", ""))) for key in path)


def _axes_of(names: tuple[str, ...]) -> tuple | None:
  """Logical axes of the parameter at `names` (its path of dict keys), or None if unknown."""
  if len(names) >= 1 and names[-1] in DIRECT:
    return DIRECT[names[-1]]
  if len(names) < 2:
    return None
  module, param = _INDEX.sub("", names[-2]), names[-1]
  if module == "experts" and param in EXPERT_WEIGHTS:
    return EXPERT_WEIGHTS[param]
  if module == "mlm_bias" and param == "bias":
    return ("vocab",)
  if module in HEAD_NORMS and param in ("scale", "bias"):
    return (None,)
  if module.endswith("norm") and param in ("scale", "bias"):
    return ("embed",)
  if param == "embedding":
    return EMBEDDINGS.get(module)
  if module.endswith(LORA_SUFFIX) and module[:-len(LORA_SUFFIX)] in PROJECTIONS:
    inputs, outputs = PROJECTIONS[module[:-len(LORA_SUFFIX)]]
    return {"a": inputs + (None,), "b": (None,) + outputs}.get(param)
  if module in PROJECTIONS:
    inputs, outputs = PROJECTIONS[module]
    return {"kernel": inputs + outputs, "bias": outputs}.get(param)
  return None


def _dict_keys(path) -> tuple[str, ...]:
  """The trailing dict keys of a pytree path: the parameter's own path inside any wrapper
  (an optimizer state nests the parameter tree inside tuples and named tuples)."""
  keys = []
  for entry in reversed(path):
    if not isinstance(entry, jax.tree_util.DictKey):
      break
    keys.append(str(entry.key))
  return tuple(reversed(keys))


def logical_axes(tree):
  """The logical axes of every array in `tree`: a PartitionSpec of logical names (None: a
  dimension with no meaning to split), as Flax's `nn.get_partition_spec` gives.

  `tree` is a parameter tree or anything that nests parameter trees (a train state, an
  optimizer state); scalars get (). Parameters inside stacked blocks (`is_stack`) have a
  leading `layers` axis. Raises ValueError naming any parameter without an entry.
  """
  def axes(path, leaf):
    shape = getattr(leaf, "shape", ())
    if not shape:
      return PartitionSpec()
    names = _dict_keys(path)
    found = _axes_of(names)
    extra = (LAYERS,) if any(is_stack(name) for name in names) else ()
    if found is None or len(extra + found) != len(shape):
      raise ValueError(
          f"no logical axes for parameter {'/'.join(names) or jax.tree_util.keystr(path)} "
          f"of shape {tuple(shape)}: add its module to attention_jax/layers/partitioning.py "
          "so the trainer knows how to shard it.")
    return PartitionSpec(*extra, *found)
  return jax.tree_util.tree_map_with_path(axes, tree)
