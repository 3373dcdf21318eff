"""Fine-tuning: which parameters train (`config.finetune.mode`), starting from a base
(`config.init_from`), and layer-wise learning-rate decay.

Modes: "full" trains everything; "linear_probe" only the new head; "top_k_layers" the head
and the top `finetune.top_k` blocks (and what the model declares above them: a final norm,
an untied LM head); "lora" the head and LoRA adapters (`finetune.lora_*`). Blocks, their
order and what is below or above them come from the model (`model.layer_groups()`), never
from parameter names. The train state holds the trained parameters; the frozen
ones ride beside them in `TrainState.frozen`, get no gradient and no optimizer state, and are
not checkpointed: they are rebuilt from the base (or the seed) at every start.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from attention_jax.layers import lora as lora_lib
from attention_jax.layers.config import with_options
from attention_jax.models import layouts
from attention_jax.models.layouts import LayerGroups

MODES = ("full", "linear_probe", "top_k_layers", "lora")
FROZEN_DTYPES = ("", "bfloat16", "float16", "float32")
# Model fields that describe what a checkpoint holds (the rest are runtime choices).
_RUNTIME_FIELDS = {"kernel", "dtype", "param_dtype", "sow_weights", "lora", "num_classes",
                   "classifier_pooling", "decode", "dropout_rate", "attention_dropout_rate",
                   "remat"}


@dataclasses.dataclass
class Base:
  """What `config.init_from` names: its parameters and what must match them."""
  reference: str  # shown in logs and stored with checkpoints
  params: dict  # nested dict of arrays
  tokenizer: object = None  # the tokenizer the parameters were trained with, if any
  model_fields: dict = dataclasses.field(default_factory=dict)  # architecture to build
  sha256: str | None = None  # of a pretrained checkpoint's weights (`weights_sha256`)
  step: int | None = None  # of a workdir base's checkpoint
  files: dict | None = None  # a pretrained checkpoint's `hub.file_digests`


def default_config() -> ml_collections.ConfigDict:
  """`config.finetune`'s fields and defaults."""
  c = ml_collections.ConfigDict()
  c.mode = "full"  # or "linear_probe", "top_k_layers", "lora"
  c.heads = ("classifier", "head")  # new for the task: always trained, never loaded
  c.top_k = 2  # blocks trained in "top_k_layers"
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.lora_targets = "query,value"  # any of query, key, value, out, fc1 (up), gate, fc2 (down)
  c.layer_decay = 1.0  # < 1: layer-wise lr decay, lr * decay ** (layers from the top)
  # "bfloat16" or "float16": hold the frozen parameters (a LoRA base, the layers below
  # top_k) in half precision, halving their memory; "" keeps them as initialised / loaded.
  c.frozen_dtype = ""
  return c


def add_defaults(config):
  """Gives a config saved before fine-tuning existed its `init_from` and `finetune` fields."""
  with config.unlocked():
    config.init_from = config.get("init_from", "")
    config.finetune = config.get("finetune", default_config())


def architecture(model) -> dict:
  """The fields of a Flax model that its parameters depend on."""
  return {f.name: getattr(model.config, f.name) for f in dataclasses.fields(model.config)
          if f.name not in _RUNTIME_FIELDS}


def check_config(config):
  cfg = config.finetune
  if cfg.mode not in MODES:
    raise ValueError(f"config.finetune.mode must be one of {MODES}, got {cfg.mode!r}.")
  if cfg.mode == "top_k_layers" and cfg.top_k < 1:
    raise ValueError(f"config.finetune.top_k must be >= 1, got {cfg.top_k}.")
  if not 0.0 < cfg.layer_decay <= 1.0:
    raise ValueError(f"config.finetune.layer_decay must be in (0, 1], got {cfg.layer_decay}.")
  if cfg.get("frozen_dtype", "") not in FROZEN_DTYPES:
    raise ValueError(f"config.finetune.frozen_dtype must be one of {FROZEN_DTYPES}, got "
                     f"{cfg.frozen_dtype!r}.")
  lora_spec(config)  # validates the LoRA fields


def lora_spec(config) -> lora_lib.LoraSpec | None:
  cfg = config.finetune
  if cfg.mode != "lora":
    return None
  targets = cfg.lora_targets
  targets = tuple(t.strip() for t in targets.split(",")) if isinstance(targets, str) else tuple(
      targets)
  return lora_lib.LoraSpec(cfg.lora_rank, cfg.lora_alpha, targets)


def _flat(params) -> dict:
  return traverse_util.flatten_dict(params)


def trainable(params, config, groups: LayerGroups) -> dict:
  """{path: bool}: whether each parameter trains in `config.finetune.mode`, by the model's
  declared layer `groups` (`model.layer_groups()`)."""
  cfg = config.finetune
  flat = _flat(params)
  heads = set(cfg.heads)
  top = {name for name, layer in zip(groups.blocks, groups.block_layers)
         if layer >= groups.depth - cfg.top_k} | set(groups.above)

  def trains(path):
    if cfg.mode == "full" or path[0] in heads:
      return True
    if cfg.mode == "lora":
      return lora_lib.is_adapter(path)
    if cfg.mode == "top_k_layers":
      # Stacked blocks train as one array; layer_scale zeroes the lower layers' updates.
      return groups.stack_layers(path) is not None or path[0] in top
    return False

  if cfg.mode == "top_k_layers" and groups.depth == 0:
    raise ValueError("finetune.mode='top_k_layers' needs a model with blocks.")
  check_lora_targets(config, groups)
  mask = {path: trains(path) for path in flat}
  if not any(mask.values()):
    raise ValueError(f"finetune.mode={cfg.mode!r} trains nothing in this model: it has no head "
                     f"named in config.finetune.heads={tuple(cfg.heads)} (top-level modules: "
                     f"{', '.join(sorted({p[0] for p in flat}))}).")
  return mask


def check_lora_targets(config, groups: LayerGroups):
  """Refuses LoRA targets that name no projection of the model."""
  spec = lora_spec(config)
  missing = sorted(set(spec.targets) - groups.projections) if spec else []
  if missing:
    raise ValueError(f"LoRA targets {missing} are not projections of this model; its blocks "
                     f"have {', '.join(sorted(groups.projections))} (gate only with a gated "
                     "MLP).")


def cast_frozen(frozen: dict, config) -> dict:
  """The frozen parameters in `config.finetune.frozen_dtype` (unchanged when it is "")."""
  dtype = config.finetune.get("frozen_dtype", "")
  if not dtype:
    return frozen
  return jax.tree.map(lambda x: x.astype(dtype) if jax.numpy.issubdtype(
      x.dtype, jax.numpy.floating) else x, frozen)


def split(params, mask: dict) -> tuple[dict, dict]:
  """(trained, frozen) nested dicts of `params` by a `trainable` mask."""
  flat = _flat(params)
  pick = lambda keep: traverse_util.unflatten_dict(
      {p: v for p, v in flat.items() if mask[p] == keep})
  return pick(True), pick(False)


def combine(trained: dict, frozen: dict) -> dict:
  """The full parameter tree from its trained and frozen parts."""
  if not frozen:
    return trained
  return traverse_util.unflatten_dict({**_flat(frozen), **_flat(trained)})


def base_arrays(base: Base | None, shapes: dict, heads) -> dict:
  """{path: array} of the base parameters to copy into a new model whose parameter shapes
  are `shapes`; prints what is loaded and what starts fresh.

  Heads (top-level modules named in `heads`) always start fresh. Every other parameter that
  both have must agree in shape, and at least one must be loaded.
  """
  if base is None:
    return {}
  base_params = layouts.to_layout(base.params, shapes)  # stacked <-> unrolled blocks
  new, old = _flat(shapes), {k: np.asarray(v) for k, v in _flat(base_params).items()}
  load = {p: old[p] for p in new if p in old and p[0] not in heads}
  wrong = [f"{'/'.join(p)}: base {old[p].shape}, model {tuple(new[p].shape)}"
           for p in load if old[p].shape != tuple(new[p].shape)]
  if wrong:
    raise ValueError(f"init_from {base.reference}: parameters differ in shape ("
                     + "; ".join(wrong[:8]) + "). Build the model with the base's "
                     "architecture, or list the module in config.finetune.heads to start it "
                     "fresh.")
  if not load:
    raise ValueError(f"init_from {base.reference}: no parameter of the base matches this "
                     "model's parameter names; is it the same model family?")
  fresh = sorted({"/".join(p[:-1]) for p in new if p not in load})
  fresh = ", ".join(fresh[:6]) + (f" and {len(fresh) - 6} more" if len(fresh) > 6 else "")
  unused = sorted({p[0] for p in old if p not in new})
  count = sum(v.size for v in load.values())
  print(f"init_from {base.reference}: loaded {len(load)} arrays ({count:,} parameters); "
        f"new: {fresh or 'none'}; unused from the base: {', '.join(unused) or 'none'}",
        file=sys.stderr)
  return load


def starting_point(model, inputs, config, base: Base | None):
  """(parameter shapes, `trainable` mask, `base_arrays` to load) of a run of `config`."""
  shapes = jax.eval_shape(lambda: initial_params(model, inputs, init_key(config.seed), {}))
  return (shapes, trainable(shapes, config, model.layer_groups()),
          base_arrays(base, shapes, config.finetune.heads))


def initial_params(model, inputs, rng, loaded: dict) -> dict:
  """model.init's parameters with the `loaded` {path: array} ones put in (jit-friendly).
  Stacked blocks (scan_layers) start from the unrolled model's initial values, stacked, so
  a seed gives the same model in either layout."""
  if model.config.scan_layers:
    params = with_options(model, scan_layers=False).init(rng, *inputs)["params"]
    params = layouts.stack(params, model.config.layer_period(),
                           model.config.first_k_dense_replace)
  else:
    params = model.init(rng, *inputs)["params"]
  if not loaded:
    return params
  flat = _flat(params)
  flat.update({p: jax.numpy.asarray(v, flat[p].dtype) for p, v in loaded.items()})
  return traverse_util.unflatten_dict(flat)


def init_key(seed: int):
  """The PRNG key a run's parameters are initialised with (training and workdir.load)."""
  return jax.random.fold_in(jax.random.key(seed), 0)


def layer_scale(params, config, groups: LayerGroups) -> optax.GradientTransformation | None:
  """Rescales each update by decay ** (its distance from the top), for layer-wise learning
  rate decay (`finetune.layer_decay` < 1): what is above the blocks 0, block i (from the
  bottom, as the model's `groups` order them) depth - i, what is below depth + 1. On stacked
  blocks the scale is a vector along the `layers` axis, which also zeroes the layers that
  `top_k_layers` freezes there (unrolled ones are frozen by `trainable` instead). None when
  there is nothing to scale."""
  decay, flat, depth = config.finetune.layer_decay, _flat(params), groups.depth
  top_k = config.finetune.top_k if config.finetune.mode == "top_k_layers" else None
  stacked = any(groups.stack_layers(p) is not None for p in flat)
  if decay == 1.0 and not (top_k and stacked):
    return None
  if depth == 0:
    raise ValueError("layer-wise lr decay needs a model with blocks.")

  def scale(path, leaf):
    layer = groups.stack_layers(path)
    if layer is not None:
      factor = decay ** (depth - layer) * (layer >= depth - top_k if top_k else 1.0)
      return factor.reshape((len(layer),) + (1,) * (len(leaf.shape) - 1)).astype(np.float32)
    index = groups.block_index(path[0])
    if index is not None:
      return np.float32(decay ** (depth - index))
    return np.float32(decay ** (depth + 1) if path[0] in groups.below else 1.0)

  scales = traverse_util.unflatten_dict({p: scale(p, v) for p, v in flat.items()})

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, c: u * c.astype(u.dtype), updates, scales), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
