"""The trainer: `train_and_evaluate(config, workdir)`, called by experiments/train.py, the
tests and the notebooks alike.

Sections: setup (config check, workdir lock and record) -> data -> model and optimizer ->
the mesh (training.parallel) -> restore -> ahead-of-time compile -> loop (step, guard, log,
evaluate, checkpoint, preemption) -> final evaluation and sample.

The loop never waits for the device between log steps: batches are sharded onto the devices
ahead of time, metrics stay on the devices and are fetched (in one transfer) only when they
are logged, before an evaluation or checkpoint, or at the end. The non-finite guard then
checks every step since the last fetch, names the first bad one, and runs before any save.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import attention_jax
from attention_jax import allocator, models
from attention_jax.data import pipeline
from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import lock as lock_lib
from attention_jax.training import metrics as metrics_lib
from attention_jax.training import finetune, optim, parallel, tasks
from attention_jax.training import workdir as workdir_lib

REQUIRED_FIELDS = ("seed", "batch_size", "num_train_steps", "log_every_steps",
                   "eval_every_steps", "checkpoint_every_steps", "model.kernel")


class NonFiniteError(FloatingPointError):
  """Raised when the loss, gradient or parameters stop being finite."""


@flax.struct.dataclass
class TrainState:
  """`params` are the trained parameters; `frozen` the rest (not trained, not checkpointed;
  empty unless config.finetune.mode freezes some, see training.finetune)."""
  step: jnp.ndarray
  params: dict
  opt_state: optax.OptState
  frozen: dict

  def model_params(self) -> dict:
    return finetune.combine(self.params, self.frozen)


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


class ResumeError(ValueError):
  """A workdir's checkpoints do not fit the config they are resumed with."""


def check_layout(config, saved_base: dict | None, workdir: str, step: int | None):
  """A checkpoint resumes only in the block layout it was written in."""
  saved = bool((saved_base or {}).get("scan_layers", False))
  wanted = bool(config.model.get("scan_layers", False))
  if saved_base is not None and saved != wanted:
    raise ResumeError(
        f"the checkpoint at step {step} in {workdir} holds "
        f"{'stacked' if saved else 'unrolled'} blocks but config.model.scan_layers={wanted}. "
        f"Resume with scan_layers={saved}, or start a new workdir with "
        f"--config.init_from={workdir} (it converts the layout).")


def check_architecture(recorded: dict | None, model, workdir: str, step: int):
  """Refuses to resume checkpoints written by a model of another architecture, naming the
  fields that differ (checkpoints from before the record existed are not checked)."""
  if recorded is None:
    return
  changes = checkpoint_lib.architecture_changes(recorded["architecture"], model)
  if changes:
    raise ResumeError(
        f"the checkpoint at step {step} in {workdir} was trained with another model; "
        f"(recorded -> now) {'; '.join(changes)}. Resume with the recorded values "
        "(--config.model.<field>=...), or start a new workdir (--config.init_from="
        f"{workdir} fine-tunes from these checkpoints).")


def model_record(config, model) -> dict:
  """The "model" record of a run's checkpoints: the architecture and config.model."""
  return {"architecture": checkpoint_lib.architecture(model),
          "config": json.loads(json.dumps(config.model.to_dict(), default=str))}


def record_run(config, workdir: str):
  """Writes the resolved config, package version and git commit into the workdir."""
  if jax.process_index() != 0:
    return
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(__file__), timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ""
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, default=str)
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump({"attention_jax": attention_jax.__version__, "jax": jax.__version__,
               "git_commit": commit or "unknown", "devices": jax.device_count(),
               "processes": jax.process_count(), "argv": sys.argv}, f, indent=1)


def make_train_step(task, model, optimizer, grad_accum_steps: int):
  """(state, batch, rng) -> (state, metrics): one jit-able step over the global batch (the
  mesh's shardings make it data / FSDP / tensor / sequence parallel)."""

  def micro_grads(params, frozen, batch, rng):
    def loss_fn(p, b, r):  # differentiated with respect to the trained parameters only
      return task.loss(model, finetune.combine(p, frozen), b, r, deterministic=False)

    if grad_accum_steps == 1:
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
      return loss, grads
    micro = jax.tree.map(lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:]), batch)

    def body(carry, xs):
      mb, i = xs
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
    return jax.tree.map(lambda x: x / grad_accum_steps, (loss, grads))

  def step(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    loss, grads = micro_grads(state.params, state.frozen, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads),
               "train/param_norm": optax.tree.norm(params),
               "train/learning_rate": optim.current_learning_rate(opt_state)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def make_eval_step(task, model):
  def step(params, batch):  # params: the full parameter tree
    _, sums = task.loss(model, params, batch, jax.random.key(0), deterministic=True)
    return sums
  return step


def check_finite(step: int, metrics: dict, checkpointer):
  """Raises NonFiniteError if step's loss, gradient or parameter norm is not finite."""
  bad = [k for k in ("train/loss", "train/grad_norm", "train/param_norm")
         if not np.isfinite(metrics[k])]
  if bad:
    last = checkpointer.latest_step()
    raise NonFiniteError(
        f"non-finite {', '.join(bad)} at step {step} "
        f"({', '.join(f'{k}={metrics[k]}' for k in bad)}); training stopped without saving "
        f"this state. Last good checkpoint: {last if last is not None else 'none'}. Lower "
        "optimizer.lr, enable clipping (optimizer.clip_norm) or check the data.")


class PreemptionFlag:
  """Set by SIGTERM (cluster preemption): the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.set = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      self.set = True
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: preemption is the caller's business
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def evaluate(task, eval_step, params, batches, model, *, prefix="eval", shard=None,
             fetch=jax.device_get, host_params=None) -> dict:
  """The task's metrics over `batches`, summed on the devices (one transfer at the end),
  plus decoding metrics (BLEU) for tasks that decode, from `host_params()` (default
  `params`). The trainer passes its mesh runner's shard / fetch; experiments.eval runs on
  one device with the defaults."""
  total = None
  for batch in batches:
    sums = eval_step(params, batch if shard is None else shard(batch))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  metrics = task.summarize(fetch(total), prefix)
  if task.decodes:
    metrics.update(task.decode_metrics(models.with_options(model, dropout_rate=0.0),
                                       params if host_params is None else host_params(),
                                       prefix))
  return metrics


def evaluate_state(task, runner, state, batches, model) -> dict:
  """`evaluate` of a train state on the runner's mesh."""
  return evaluate(task, runner.eval_step, state.model_params(), batches, model,
                  shard=runner.shard_batch, fetch=runner.fetch,
                  host_params=lambda: runner.host_params(state))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final
  evaluation metrics (plus "sample" for language models). Refuses a workdir that another
  live run holds."""
  check_config(config)
  os.makedirs(workdir, exist_ok=True)
  with lock_lib.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


@dataclasses.dataclass
class Built:
  """A run's model, mesh runner and uncompiled step (train_and_evaluate and
  experiments.plan build them alike)."""
  model: object
  runner: parallel.Runner
  step: object  # make_train_step's (state, batch, rng) -> (state, metrics)
  train_data: object
  eval_data: object
  base_info: dict


def build(config, task, base=None, devices=None) -> Built:
  """Builds everything the step needs, allocating nothing on the devices. `task` has been
  prepared (its tokenizer exists); `base` is config.init_from's, if any; `devices` replace
  the local ones (experiments.plan's TPU topologies)."""
  train_data, eval_data = task.datasets()
  model = task.model(**({"dtype": jnp.bfloat16} if config.precision == "bfloat16" else {}))
  init_rng = finetune.init_key(config.seed)
  inputs = task.init_inputs()
  shapes, mask, loaded = finetune.starting_point(model, inputs, config, base)
  trained_shapes, _ = finetune.split(shapes, mask)
  optimizer = optim.make_optimizer(config.optimizer, config.num_train_steps,
                                   finetune.layer_scale(trained_shapes, config,
                                                        model.layer_groups()))
  base_info = describe_training(config, base, shapes, trained_shapes)
  if base is not None:
    base.params = {}  # release it: `loaded` holds what the model uses

  def init_state(loaded):
    params = finetune.initial_params(model, inputs, init_rng, loaded)
    trained, frozen = finetune.split(params, mask)
    return TrainState(jnp.zeros((), jnp.int32), trained, optimizer.init(trained),
                      finetune.cast_frozen(frozen, config))

  runner = parallel.Runner(config, init_state, (loaded,), devices=devices)
  step = make_train_step(task, model, optimizer, config.grad_accum_steps)
  return Built(model, runner, step, train_data, eval_data, base_info)


@dataclasses.dataclass
class Run:
  """What the training loop works with: the run's parts, built once by train_and_evaluate."""
  config: object
  task: object
  model: object
  runner: parallel.Runner
  train_step: object  # the compiled step
  batches: object  # DevicePrefetch of the training batches
  eval_batches: list
  checkpointer: checkpoint_lib.Checkpointer
  writer: metrics_lib.MetricWriter
  bar: metrics_lib.ProgressBar
  step_rng: jax.Array
  preempted: PreemptionFlag
  base_info: dict
  model_info: dict  # the checkpoints' "model" record


def _train_and_evaluate(config, workdir: str) -> dict:
  task = tasks.get(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints,
                                             "eval/loss")
  try:
    start = checkpointer.latest_intact_step()  # damaged newer ones are set aside
    # A resumed run rebuilds its frozen parameters from the very base it started from.
    saved_base = checkpointer.base_info(start) if start is not None else None
    check_layout(config, saved_base, workdir, start)
    base = workdir_lib.load_base(config.init_from, saved_base) if config.init_from else None
    task.prepare(workdir, base)
    built = build(config, task, base)
    del base
    if start is not None:
      check_architecture(checkpointer.model_info(start), built.model, workdir, start)
    state = built.runner.init()
    if start is not None:  # the checkpoint has the trained part; the frozen one is rebuilt
      saved, data_state = checkpointer.restore(start, checkpoint_lib.abstract_like(
          checkpointed(state)))
      state = state.replace(**saved)
  except BaseException:
    checkpointer.close()
    raise
  record_run(config, workdir)  # once the checkpoints are known to belong to this config
  model, runner, train_data, eval_data = (built.model, built.runner, built.train_data,
                                          built.eval_data)
  step_rng, sample_rng = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))
  train_iter = pipeline.train_iterator(train_data, config.batch_size, config.seed)
  if start is not None:
    train_iter.set_state(data_state)
    print(f"resumed from {workdir} at step {start}", file=sys.stderr)
  start = start or 0
  writer = metrics_lib.MetricWriter(workdir, resume_step=start)
  eval_batches = pipeline.eval_batches(eval_data, config.eval_batch_size or config.batch_size,
                                       config.eval_max_batches or None)

  train_step = runner.compile_train(built.step, next_example_batch(train_data, config),
                                    step_rng)
  runner.compile_eval(make_eval_step(task, model))
  allocator.release()  # what compilation freed
  print(allocator.describe(), file=sys.stderr)
  bar = metrics_lib.ProgressBar(config.num_train_steps, start, task.unit,
                                flops_per_step=metrics_lib.step_flops(train_step))
  try:
    with PreemptionFlag() as preempted:
      run = Run(config, task, model, runner, train_step,
                DevicePrefetch(train_iter, runner.shard_batch), eval_batches, checkpointer,
                writer, bar, step_rng, preempted, built.base_info,
                model_record(config, model))
      state, last_eval, stopped_at = train_loop(run, state, start)
  finally:  # also on errors (a non-finite loss): flush the logs, finish the save in flight
    writer.close()
    checkpointer.close()
  if stopped_at is not None:
    print(f"SIGTERM: saved a checkpoint at step {stopped_at}; exiting. Run the same command "
          "to resume.", file=sys.stderr)
    return {"preempted_at_step": stopped_at}
  results = dict(last_eval or evaluate_state(task, runner, state, eval_batches, model))
  if jax.process_index() == 0:
    sample = task.sample(models.with_options(model, dropout_rate=0.0),
                         runner.host_params(state), sample_rng)
    if sample is not None:
      results["sample"] = sample
  return results


class DevicePrefetch:
  """Training batches sharded onto the devices `depth` steps ahead (double-buffered), so
  the host-to-device copy of the next batch overlaps the current step. Each batch comes with
  the data iterator's state after it: what a checkpoint at that step must resume from."""

  def __init__(self, iterator, shard, depth: int = 2):
    self.iterator, self.shard, self.depth = iterator, shard, depth
    self.queue = collections.deque()

  def __iter__(self):
    return self

  def __next__(self):
    while len(self.queue) < self.depth:
      batch = next(self.iterator)
      self.queue.append((self.shard(batch), self.iterator.get_state()))
    return self.queue.popleft()


def train_loop(run: Run, state, start: int):
  """Steps start + 1 .. num_train_steps: guard, log, evaluate, checkpoint, preemption.

  Returns:
    (state, the last evaluation or None, the step a SIGTERM stopped at or None).
  """
  config = run.config
  items = config.batch_size * run.task.items_per_example()
  last_eval, pending, loss = None, [], float("nan")
  for step in range(start + 1, config.num_train_steps + 1):
    batch, data_state = next(run.batches)
    state, metrics = run.train_step(state, batch, run.step_rng)
    pending.append((step, metrics))  # stays on the device until it is needed
    is_last = step == config.num_train_steps
    logged = step % config.log_every_steps == 0 or is_last
    evaluated = step % config.eval_every_steps == 0 or is_last
    stop = run.preempted.set  # read once: a SIGTERM may arrive at any moment
    saved = step % config.checkpoint_every_steps == 0 or is_last or stop
    if logged or evaluated or saved:
      fetched = run.runner.fetch([m for _, m in pending])
      for (pending_step, _), values in zip(pending, fetched):
        check_finite(pending_step, values, run.checkpointer)  # names the first bad step
      run.checkpointer.raise_if_save_failed()  # a background save that failed stops here
      pending, metrics = [], {k: float(v) for k, v in fetched[-1].items()}
      loss = metrics["train/loss"]
      if logged:
        run.writer.write(step, metrics)
    run.bar.update(step, items, loss, force=is_last)
    if evaluated:
      allocator.release()  # the training step's free temporaries, before evaluation's
      last_eval = evaluate_state(run.task, run.runner, state, run.eval_batches,
                                 run.model)
      allocator.release()
      run.writer.write(step, last_eval)
      print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()),
            file=sys.stderr)
    if saved:
      run.checkpointer.save(step, checkpointed(state), data_state, run.base_info,
                            run.model_info, last_eval if evaluated else None, force=True)
    if stop:
      return state, last_eval, step
  return state, last_eval, None


def checkpointed(state) -> dict:
  """What a checkpoint holds: the state (global arrays, in any layout) without its frozen
  parameters."""
  return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


def describe_training(config, base, shapes, trained_shapes) -> dict:
  """Prints and returns (for checkpoints) what the run starts from and trains."""
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  total, trained = count(shapes), count(trained_shapes)
  info = {"init_from": config.init_from, "sha256": base.sha256 if base else None,
          "files": base.files if base else None,
          "base": base.reference if base else None,
          "base_step": base.step if base else None, "mode": config.finetune.mode,
          "parameters": total, "trained_parameters": trained,
          "scan_layers": bool(config.model.get("scan_layers", False))}
  print(f"training {trained:,} of {total:,} parameters ({100 * trained / total:.2f}%, "
        f"finetune.mode={config.finetune.mode})", file=sys.stderr)
  return info


def next_example_batch(train_data, config):
  """A batch of the training shapes for ahead-of-time compilation (not consumed)."""
  per_host = config.batch_size // jax.process_count()
  examples = [train_data[i % len(train_data)] for i in range(per_host)]
  return jax.tree.map(lambda *xs: np.stack(xs), *examples)
