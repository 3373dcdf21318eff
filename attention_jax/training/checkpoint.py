"""Orbax checkpoints of the train state, the data iterator position and the base reference.

Saves are asynchronous and atomic (written to a temporary directory, then renamed), so a crash
mid-save leaves the previous checkpoint intact. Keeps the latest `keep` checkpoints and the
best by `best_metric` (lower is better).
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """Save and restore {"state": train state pytree, "data": iterator state (JSON), "base":
  what the run started from and what it trains (JSON; see training.finetune)}."""

  def __init__(self, workdir: str, keep: int, best_metric: str | None):
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=True, n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True, cleanup_tmp_directories=True)
    self.best_metric = best_metric
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)), options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(), "base": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step() if self.best_metric else None

  def save(self, step: int, state, data_state: dict, base: dict,
           metrics: dict | None = None, force: bool = False) -> bool:
    if metrics is not None and self.best_metric not in metrics:
      metrics = None
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        base=ocp.args.JsonSave(base)), metrics=metrics, force=force)

  def base_info(self, step: int) -> dict | None:
    """The "base" record of checkpoint `step` (None for checkpoints from before it existed)."""
    if "base" not in self.manager.item_metadata(step):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(base=ocp.args.JsonRestore()))[
        "base"]

  def restore(self, step: int, abstract_state):
    """(state, data_state) of checkpoint `step`; `abstract_state` gives shapes/shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
