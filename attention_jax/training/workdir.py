"""Reading a training workdir back (its config, model and a checkpoint's parameters), and the
base a run starts from (`config.init_from`: a pretrained checkpoint or another workdir)."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from attention_jax import pretrained
from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import finetune, tasks


def is_workdir(path: str) -> bool:
  return (os.path.exists(os.path.join(path, "config.json"))
          and os.path.isdir(os.path.join(path, checkpoint_lib.CHECKPOINT_DIR)))


def load(workdir: str, checkpoint: str = "latest", eval_split: str | None = None):
  """(config, task, model, params, step) for checkpoint "latest", "best" or a step number,
  with the task's evaluation data read from `eval_split` if given.

  `params` is the full parameter tree: for a run that froze some parameters (LoRA, linear
  probe, top layers), the frozen part is rebuilt from the run's base and seed.
  """
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir} has no config.json: not a training workdir.")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if eval_split:
    config.dataset.eval_split = eval_split
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, "eval/loss")
  steps = checkpointer.manager.all_steps()
  if checkpoint == "latest":
    step = checkpointer.latest_step()
  elif checkpoint == "best":
    step = checkpointer.best_step() or checkpointer.latest_step()
  elif str(checkpoint).isdigit() and int(checkpoint) in steps:
    step = int(checkpoint)
  else:
    raise ValueError(f"checkpoint must be 'latest', 'best' or one of the saved steps "
                     f"{sorted(steps)}, got {checkpoint!r}.")
  checkpointer.close()
  if step is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint yet.")
  state = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR, str(step), "state")))
  base = load_base(config.init_from) if config.init_from else None
  task = tasks.get(config)
  task.prepare(workdir, base)
  model = task.model(dropout_rate=0.0)
  inputs = task.init_inputs()
  shapes = jax.eval_shape(lambda: model.init(finetune.init_key(config.seed), *inputs)["params"])
  mask = finetune.trainable(shapes, config)
  params = state["params"]
  if not all(mask.values()):
    loaded = finetune.base_arrays(base, shapes, config.finetune.heads)
    initial = jax.jit(lambda a: finetune.initial_params(
        model, inputs, finetune.init_key(config.seed), a))(loaded)
    params = finetune.combine(params, finetune.split(initial, mask)[1])
  return config, task, model, params, step


def load_base(init_from: str) -> finetune.Base:
  """The parameters (and tokenizer and architecture) `config.init_from` names: a training
  workdir (its latest checkpoint) or a pretrained checkpoint (a known name or a Hugging Face
  directory, see attention_jax.pretrained)."""
  if is_workdir(init_from):
    _, task, model, params, step = load(init_from)
    return finetune.Base(f"{init_from} (step {step})", params, task.tokenizer,
                         finetune.architecture(model))
  if init_from not in pretrained.KNOWN and not os.path.isdir(init_from):
    raise FileNotFoundError(
        f"config.init_from={init_from!r} is not a training workdir (config.json and "
        f"{checkpoint_lib.CHECKPOINT_DIR}/), a known pretrained checkpoint "
        f"({', '.join(sorted(pretrained.KNOWN))}) or a Hugging Face checkpoint directory.")
  directory, sha256 = pretrained.resolve(init_from)
  model, params, tokenizer = pretrained.load(init_from)
  return finetune.Base(init_from, params, tokenizer, finetune.architecture(model),
                       sha256 or pretrained.hub.sha256_of(
                           os.path.join(directory, pretrained.hub.WEIGHTS_FILE)))
