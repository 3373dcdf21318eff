"""Reading a training workdir back: its config, model and a checkpoint's parameters."""

from __future__ import annotations

import json
import os

import ml_collections
import orbax.checkpoint as ocp

from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import tasks


def load(workdir: str, checkpoint: str = "latest"):
  """(config, task, model, params, step) for checkpoint "latest", "best" or a step number."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{workdir} has no config.json: not a training workdir.")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
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
  task = tasks.get(config)
  task.prepare(workdir)
  model = task.model(dropout_rate=0.0)
  return config, task, model, state["params"], step
