"""Reading a training workdir back (its config, model and a checkpoint's parameters), and the
base a run starts from (`config.init_from`: a pretrained checkpoint or another workdir)."""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections
import orbax.checkpoint as ocp

from attention_jax import models, pretrained
from attention_jax.layers import lora
from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import finetune, tasks
from attention_jax.training import init_from as init_from_lib


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
  finetune.add_defaults(config)  # workdirs from before fine-tuning existed
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, "eval/loss")
  try:
    steps = checkpointer.all_steps()
    if checkpoint == "latest":
      step = checkpointer.latest_step()
    elif checkpoint == "best":
      step = checkpointer.best_step() or checkpointer.latest_step()
    elif str(checkpoint).isdigit() and int(checkpoint) in steps:
      step = int(checkpoint)
    else:
      raise ValueError(f"checkpoint must be 'latest', 'best' or one of the saved steps "
                       f"{steps}, got {checkpoint!r}.")
    if step is None:
      raise FileNotFoundError(f"{workdir} has no checkpoint yet.")
    problem = checkpointer.damage(step)
    if problem:
      raise ValueError(f"checkpoint {step} in {workdir} is damaged: {problem}. Choose another "
                       f"with --checkpoint (saved steps: {steps}).")
    saved_base = checkpointer.base_info(step)
    recorded = checkpointer.model_info(step)
  finally:
    checkpointer.close()
  state = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(workdir, checkpoint_lib.CHECKPOINT_DIR, str(step), "state")))
  if recorded is not None:
    use_recorded_model(config, recorded, config_path)
  base = load_base(config.init_from, saved_base) if config.init_from else None
  task = tasks.create(config, workdir, base)
  model = task.model(dropout_rate=0.0)
  changes = recorded and checkpoint_lib.architecture_changes(recorded["architecture"], model)
  if changes:
    raise ValueError(f"{workdir}'s config.json no longer builds the model that checkpoint "
                     f"{step} was trained with: (recorded -> now) {'; '.join(changes)}. "
                     "Restore the run's dataset settings and tokenizer.")
  inputs = task.init_inputs()
  _, mask, loaded = finetune.starting_point(model, inputs, config, base)
  params = state["params"]
  if not all(mask.values()):  # rebuild the frozen part as training did
    initial = jax.jit(lambda a: finetune.initial_params(
        model, inputs, finetune.init_key(config.seed), a))(loaded)
    params = finetune.combine(params, finetune.split(initial, mask)[1])
  return config, task, model, params, step


def use_recorded_model(config, recorded: dict, config_path: str):
  """Sets config.model to the checkpoint's own record, saying which edits of config.json's
  model section that overrides."""
  edited = config.model.to_dict()
  edits = sorted(k for k in set(edited) | set(recorded["config"])
                 if edited.get(k) != recorded["config"].get(k))
  if edits:
    print(f"{config_path}: the model section differs from what the checkpoint was trained "
          f"with ({', '.join(edits)}); using the checkpoint's record", file=sys.stderr)
  config.model = ml_collections.ConfigDict(recorded["config"])


def export(workdir: str, out: str, checkpoint: str = "latest") -> str:
  """Writes a workdir's model as a Hugging Face checkpoint in `out` (LoRA adapters merged
  into the weights; a BPE tokenizer and its chat template with it); returns `out`."""
  _, task, _, params, step = load(workdir, checkpoint)
  model = task.model()  # as configured (the loaded one has dropout off for evaluation)
  if model.config.lora is not None:
    params = lora.merge(params, model.config.lora)
    model = models.with_options(model, lora=None)
  pretrained.export(model, params, out, task.tokenizer)  # bytes: no tokenizer.json
  print(f"exported step {step} of {workdir} to {out}", file=sys.stderr)
  return out


def load_model(init_from: str, checkpoint: str = "latest", kernel: str = "auto"):
  """(model, params, tokenizer or None): a training workdir's checkpoint (`checkpoint`:
  "latest", "best" or a step) or a Hugging Face checkpoint directory (loaded with attention
  `kernel`)."""
  if is_workdir(init_from):
    _, task, model, params, _ = load(init_from, checkpoint)
    return model, params, task.tokenizer
  return pretrained.load(init_from, kernel=kernel)


def load_decoder(init_from: str, checkpoint: str = "latest", kernel: str = "auto"):
  """(model, params, tokenizer) of a GPT or Llama to generate from (`load_model`)."""
  model, params, tokenizer = load_model(init_from, checkpoint, kernel)
  if not isinstance(model, (models.GPT, models.Llama)):
    raise ValueError(f"{init_from} holds a {type(model).__name__}; generation needs a GPT or "
                     "a Llama.")
  if tokenizer is None:
    raise ValueError(f"{init_from} has no tokenizer (tokenizer.json) to encode prompts.")
  return model, params, tokenizer


def load_base(init_from: str, saved: dict | None = None) -> finetune.Base:
  """The parameters (and tokenizer and architecture) `config.init_from` names: a training
  workdir (its latest checkpoint) or a pretrained checkpoint (a known name or a Hugging Face
  directory, see attention_jax.pretrained). LoRA adapters of a workdir base are merged in.

  `saved` is the "base" record of a checkpoint being resumed or loaded: the same workdir step
  is loaded again, and a changed init_from or pretrained file is refused.
  """
  init_from_lib.check_same_init_from(init_from, saved)
  if is_workdir(init_from):
    step = saved.get("base_step") if saved else None
    _, task, model, params, step = load(init_from, "latest" if step is None else str(step))
    if model.config.lora is not None:
      params = lora.merge(params, model.config.lora)
      model = models.with_options(model, lora=None)
    return finetune.Base(f"{init_from} (step {step})", jax.device_get(params), task.tokenizer,
                         finetune.architecture(model), step=step)
  return init_from_lib.pretrained_base(init_from, saved)
