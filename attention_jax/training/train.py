"""The trainer: `train_and_evaluate(config, workdir)`, called by experiments/train.py, the
tests and the notebooks alike: the workdir's lock and record, the run built by
`training.setup` (resuming from the newest intact checkpoint), then the loop (step, guard,
log, evaluate, checkpoint, preemption) and the final evaluation and sample.

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

import jax
import numpy as np

import attention_jax
from attention_jax import allocator, models
from attention_jax.data import pipeline
from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import evaluation
from attention_jax.training import lock as lock_lib
from attention_jax.training import metrics as metrics_lib
from attention_jax.training import setup as setup_lib
from attention_jax.training import state as state_lib


class NonFiniteError(FloatingPointError):
  """Raised when the loss, gradient or parameters stop being finite."""


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


def experts_on_cpu(model) -> bool:
  """Whether the step runs a mixture of experts on XLA:CPU, whose step-to-step allocations
  follow the routing: the tuned heap of `allocator` fragmented to 24 GB in 200 steps with
  either dispatch (and stays at 1.5-2 GB with glibc's large-block settings)."""
  return (getattr(model.config, "num_experts", None) is not None
          and jax.default_backend() == "cpu")


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


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final
  evaluation metrics (plus "sample" for language models). Refuses a workdir that another
  live run holds."""
  setup_lib.check_config(config)
  os.makedirs(workdir, exist_ok=True)
  with lock_lib.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


@dataclasses.dataclass
class Run:
  """What the training loop works with: the built run and the loop's own parts."""
  setup: setup_lib.Setup
  batches: object  # DevicePrefetch of the training batches
  eval_batches: list
  checkpointer: checkpoint_lib.Checkpointer
  writer: metrics_lib.MetricWriter
  bar: metrics_lib.ProgressBar
  preempted: PreemptionFlag


def _train_and_evaluate(config, workdir: str) -> dict:
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints,
                                             "eval/loss")
  try:
    start = checkpointer.latest_intact_step()  # damaged newer ones are set aside
    # A resumed run rebuilds its frozen parameters from the very base it started from.
    run_setup = setup_lib.setup(config, workdir=workdir, resume=(
        checkpointer.records(start) if start is not None else None))
    state = run_setup.runner.init()
    if start is not None:  # the checkpoint has the trained part; the frozen one is rebuilt
      saved, data_state = checkpointer.restore(start, checkpoint_lib.abstract_like(
          state_lib.checkpointed(state)))
      state = state.replace(**saved)
  except BaseException:
    checkpointer.close()
    raise
  record_run(config, workdir)  # once the checkpoints are known to belong to this config
  task, model, runner = run_setup.task, run_setup.model, run_setup.runner
  train_iter = pipeline.train_iterator(run_setup.train_data, config.batch_size, config.seed)
  if start is not None:
    train_iter.set_state(data_state)
    print(f"resumed from {workdir} at step {start}", file=sys.stderr)
  start = start or 0
  writer = metrics_lib.MetricWriter(workdir, resume_step=start)
  eval_batches = pipeline.eval_batches(run_setup.eval_data,
                                       config.eval_batch_size or config.batch_size,
                                       config.eval_max_batches or None)
  if experts_on_cpu(model):
    allocator.restore("a mixture of experts on XLA:CPU allocates by its routing")
  allocator.release()  # what compilation freed
  print(allocator.describe(), file=sys.stderr)
  bar = metrics_lib.ProgressBar(config.num_train_steps, start, task.unit,
                                flops_per_step=metrics_lib.step_flops(run_setup.train_step))
  try:
    with PreemptionFlag() as preempted:
      run = Run(run_setup, DevicePrefetch(train_iter, runner.shard_batch), eval_batches,
                checkpointer, writer, bar, preempted)
      state, last_eval, stopped_at = train_loop(run, state, start)
  finally:  # also on errors (a non-finite loss): flush the logs, finish the save in flight
    writer.close()
    checkpointer.close()
  if stopped_at is not None:
    print(f"SIGTERM: saved a checkpoint at step {stopped_at}; exiting. Run the same command "
          "to resume.", file=sys.stderr)
    return {"preempted_at_step": stopped_at}
  results = dict(last_eval or evaluation.evaluate_state(task, runner, state, eval_batches,
                                                        model))
  if jax.process_index() == 0:
    sample = task.sample(models.with_options(model, dropout_rate=0.0),
                         runner.host_params(state), run_setup.sample_rng)
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
  built = run.setup
  config = built.config
  items = config.batch_size * built.task.items_per_example()
  last_eval, pending, loss = None, [], float("nan")
  for step in range(start + 1, config.num_train_steps + 1):
    batch, data_state = next(run.batches)
    state, metrics = built.train_step(state, batch, built.step_rng)
    pending.append((step, metrics))  # stays on the device until it is needed
    is_last = step == config.num_train_steps
    logged = step % config.log_every_steps == 0 or is_last
    evaluated = step % config.eval_every_steps == 0 or is_last
    stop = run.preempted.set  # read once: a SIGTERM may arrive at any moment
    saved = step % config.checkpoint_every_steps == 0 or is_last or stop
    if logged or evaluated or saved:
      fetched = built.runner.fetch([m for _, m in pending])
      for (pending_step, _), values in zip(pending, fetched):
        check_finite(pending_step, values, run.checkpointer)  # names the first bad step
      run.checkpointer.raise_if_save_failed()  # a background save that failed stops here
      pending, metrics = [], {k: metrics_lib.host_value(v) for k, v in fetched[-1].items()}
      loss = metrics["train/loss"]
      if logged:
        run.writer.write(step, metrics)
    run.bar.update(step, items, loss, force=is_last)
    if evaluated:
      allocator.release()  # the training step's free temporaries, before evaluation's
      last_eval = evaluation.evaluate_state(built.task, built.runner, state,
                                            run.eval_batches, built.model)
      allocator.release()
      run.writer.write(step, last_eval)
      print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()),
            file=sys.stderr)
    if saved:
      run.checkpointer.save(step, state_lib.checkpointed(state), data_state,
                            built.base_record, built.model_record,
                            last_eval if evaluated else None, force=True)
    if stop:
      return state, last_eval, step
  return state, last_eval, None
