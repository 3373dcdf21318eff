"""Evaluation: a task's metrics over batches, for the trainer (on its mesh), for a finished
workdir's checkpoint (`evaluate_workdir`, experiments.eval) and for the tests alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax import models
from attention_jax.data import pipeline
from attention_jax.training import workdir as workdir_lib


def make_eval_step(task, model):
  """(params, batch) -> the task's loss sums; params: the full parameter tree."""
  def step(params, batch):
    _, sums = task.loss(model, params, batch, jax.random.key(0), deterministic=True)
    return sums
  return step


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


def evaluate_workdir(workdir: str, checkpoint: str = "latest", split: str = "validation"
                     ) -> tuple[int, dict]:
  """(step, metrics) of a workdir's checkpoint on a split, by the trainer's own evaluation
  (so a translation workdir reports BLEU too); metric names start with the split's."""
  config, task, model, params, step = workdir_lib.load(workdir, checkpoint, split)
  _, data = task.datasets()
  batches = pipeline.eval_batches(data, config.eval_batch_size or config.batch_size)
  metrics = evaluate(task, jax.jit(make_eval_step(task, model)), params, batches, model,
                     prefix=split)
  return step, metrics
