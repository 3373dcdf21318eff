"""One way to build a run: `setup(config)` is everything a training step needs, built once,
for the trainer (train.py), the planner (plan.py) and the benchmarks alike, so what they run
or time is the trainer's own compiled step.

The order: the config checked -> (resuming: the checkpoint's block layout) -> config.init_from's
base loaded (and checked against the resumed run's record) -> the task prepared (its
tokenizer) -> data, model, optimizer and mesh runner -> (resuming: the architecture) -> the
step compiled ahead of time. Nothing is allocated on the devices: `setup.runner.init()` makes
the state.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import evaluation, finetune, init_from, optim, parallel, tasks
from attention_jax.training import state as state_lib
from attention_jax.training import workdir as workdir_lib

REQUIRED_FIELDS = ("seed", "batch_size", "num_train_steps", "log_every_steps",
                   "eval_every_steps", "checkpoint_every_steps", "model.kernel")


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run, built: what the training loop, the planner and the benchmarks work with."""
  config: object  # the ml_collections.ConfigDict
  task: tasks.Task  # prepared: its tokenizer exists
  model: object
  runner: parallel.Runner  # the mesh; runner.init() allocates the state
  train_step: object  # compiled (state, batch, rng) -> (state, metrics)
  step_rng: jax.Array  # the rng train_step is called with
  sample_rng: jax.Array  # the rng of the task's sample at the end of training
  train_data: object  # grain MapDatasets of examples
  eval_data: object
  base_record: dict  # the checkpoints' "base" record (init_from.base_record)
  model_record: dict  # the checkpoints' "model" record (architecture, config.model)
  compile_seconds: float


def setup(config, *, workdir: str | None = None, devices=None,
          resume: dict | None = None) -> Setup:
  """Builds and compiles the run `config` describes.

  Args:
    config: a training config (configs/*.py `get_config()`).
    workdir: where the task keeps what it derives from the data (a trained tokenizer);
      None builds it in memory.
    devices: replace the local devices (experiments.plan's TPU topologies).
    resume: the records of the checkpoint being resumed ({"step", "base", "model"},
      `Checkpointer.records`): its base is loaded again and checked, and a changed block
      layout or architecture is a ResumeError before anything compiles.
  """
  check_config(config)
  saved_base = resume["base"] if resume else None
  if resume:
    init_from.check_layout(config, saved_base, workdir, resume["step"])
  base = workdir_lib.load_base(config.init_from, saved_base) if config.init_from else None
  task = tasks.create(config, workdir, base)
  train_data, eval_data = task.datasets()
  model = task.model(**({"dtype": jnp.bfloat16} if config.precision == "bfloat16" else {}))
  if resume:
    check_architecture(resume["model"], model, workdir, resume["step"])
  inputs = task.init_inputs()
  shapes, mask, loaded = finetune.starting_point(model, inputs, config, base)
  trained_shapes, _ = finetune.split(shapes, mask)
  optimizer = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                   finetune.layer_scale(trained_shapes, config,
                                                        model.layer_groups()))
  base_record = init_from.base_record(config, base, shapes, trained_shapes)
  del base  # `loaded` holds what the model uses of it
  init_rng = finetune.init_key(config.seed)

  def init_state(loaded):
    params = finetune.initial_params(model, inputs, init_rng, loaded)
    trained, frozen = finetune.split(params, mask)
    return state_lib.TrainState(jnp.zeros((), jnp.int32), trained, optimizer.init(trained),
                                finetune.cast_frozen(frozen, config))

  runner = parallel.Runner(config, init_state, (loaded,), devices=devices)
  step_rng, sample_rng = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
  start = time.perf_counter()
  train_step = runner.compile_train(
      state_lib.make_train_step(task, model, optimizer, config.grad_accum_steps),
      next_example_batch(train_data, config), step_rng)
  compile_seconds = time.perf_counter() - start
  runner.compile_eval(evaluation.make_eval_step(task, model))  # compiled at its first call
  return Setup(config, task, model, runner, train_step, step_rng, sample_rng, train_data,
               eval_data, base_record, model_record(config, model), compile_seconds)


def check_config(config):
  for field in REQUIRED_FIELDS:
    node = config
    for part in field.split("."):
      if part not in node:
        raise ValueError(f"config is missing `{field}`; every training config sets "
                         f"{', '.join(REQUIRED_FIELDS)}.")
      node = node[part]
  for field in ("batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
                "checkpoint_every_steps", "grad_accum_steps"):
    if config[field] < 1:
      raise ValueError(f"config.{field} must be >= 1, got {config[field]}.")
  if config.parallelism not in parallel.MODES:
    raise ValueError(f"config.parallelism must be one of {parallel.MODES}, got "
                     f"{config.parallelism!r}.")
  parallel.rules(config)  # unknown mesh axes in the rule table fail here
  kernel = str(config.model.kernel).partition(":")[0]
  if config.mesh.sequence != 1 and kernel not in ("auto", "ring"):
    raise ValueError(f"config.mesh.sequence={config.mesh.sequence} splits the sequence over "
                     f"devices, which needs model.kernel='ring' (or 'auto'), not {kernel!r}.")
  finetune.check_config(config)


def check_architecture(recorded: dict | None, model, workdir: str, step: int):
  """Refuses to resume checkpoints written by a model of another architecture, naming the
  fields that differ (checkpoints from before the record existed are not checked)."""
  if recorded is None:
    return
  changes = checkpoint_lib.architecture_changes(recorded["architecture"], model)
  if changes:
    raise checkpoint_lib.ResumeError(
        f"the checkpoint at step {step} in {workdir} was trained with another model; "
        f"(recorded -> now) {'; '.join(changes)}. Resume with the recorded values "
        "(--config.model.<field>=...), or start a new workdir (--config.init_from="
        f"{workdir} fine-tunes from these checkpoints).")


def model_record(config, model) -> dict:
  """The "model" record of a run's checkpoints: the architecture and config.model."""
  return {"architecture": checkpoint_lib.architecture(model),
          "config": json.loads(json.dumps(config.model.to_dict(), default=str))}


def next_example_batch(train_data, config):
  """A batch of the training shapes for ahead-of-time compilation (not consumed)."""
  per_host = config.batch_size // jax.process_count()
  examples = [train_data[i % len(train_data)] for i in range(per_host)]
  return jax.tree.map(lambda *xs: np.stack(xs), *examples)
