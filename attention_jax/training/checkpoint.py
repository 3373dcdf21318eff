"""Orbax checkpoints of the train state, the data iterator position, the base reference and the
model's architecture, each verified on restore.

Saves are asynchronous and atomic (written to a temporary directory, then renamed), so a crash
mid-save leaves the previous checkpoint intact. Keeps the latest `keep` checkpoints and the
best by `best_metric` (lower is better).

Every checkpoint carries `sha256.json`: the SHA-256 of each file it holds, computed in the save's
background thread just before the rename (so a finished checkpoint always has one). Restoring
checks it first: `latest_intact_step` sets a damaged checkpoint aside (into
`checkpoints_damaged/` beside `checkpoints/`, never deleted) and falls back to the newest intact
one. A save that fails in the background (a full disk) is reported by `raise_if_save_failed`,
which the trainer calls whenever it fetches metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from attention_jax.pretrained import hub

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"
DIGEST_FILE = "sha256.json"
# Files at a checkpoint's top that Orbax itself writes after the save (its step metadata, the
# commit marker): not in the digest. Every item's files are.
_UNRECORDED = (DIGEST_FILE, "_CHECKPOINT_METADATA", "commit_success.txt")
# Model config fields free to change between runs of one checkpoint (the rest are recorded
# and must match on resume; scan_layers has its own check and message).
RESUMABLE_FIELDS = ("kernel", "dtype", "remat", "scan_layers", "decode", "sow_weights",
                    "dropout_rate", "attention_dropout_rate", "local_window")


class CheckpointSaveError(RuntimeError):
  """A checkpoint's asynchronous save failed (a full disk, a lost mount, ...)."""


class ResumeError(ValueError):
  """A workdir's checkpoints do not fit the config they are resumed with."""


def directory_digest(directory: str) -> dict[str, str]:
  """{path relative to `directory`: SHA-256} of every file below it (but _UNRECORDED)."""
  digest = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, directory)
      if relative not in _UNRECORDED:
        digest[relative] = hub.sha256_of(path)
  return dict(sorted(digest.items()))


def damage(directory: str) -> str | None:
  """What is wrong with a checkpoint directory against its digest (None if intact); a
  checkpoint written before digests were recorded reads as intact."""
  path = os.path.join(directory, DIGEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f)
    if not isinstance(recorded, dict):
      raise ValueError("not a JSON object")
  except (ValueError, UnicodeDecodeError) as e:
    return f"{DIGEST_FILE} is unreadable ({e})"
  for relative, expected in recorded.items():
    file = os.path.join(directory, relative)
    if not os.path.isfile(file):
      return f"{relative} is missing"
    if hub.sha256_of(file) != expected:
      return f"{relative} has changed since it was written (SHA-256 differs)"
  return None


def _json(value):
  """A model config value as JSON (dataclasses as dicts, dtypes and callables by name)."""
  if dataclasses.is_dataclass(value):
    return {f.name: _json(getattr(value, f.name)) for f in dataclasses.fields(value)}
  if isinstance(value, (list, tuple)):
    return [_json(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  try:
    return np.dtype(value).name
  except TypeError:
    return getattr(value, "__name__", str(value))


def architecture(model) -> dict:
  """What a checkpoint records of its model: the family and every config field its
  parameters depend on (all but RESUMABLE_FIELDS), as JSON."""
  return {"family": type(model).__name__,
          **{f.name: _json(getattr(model.config, f.name))
             for f in dataclasses.fields(model.config) if f.name not in RESUMABLE_FIELDS}}


def architecture_changes(recorded: dict, model) -> list[str]:
  """The fields in which `model` differs from a recorded architecture, as "name: recorded ->
  now" (empty if none)."""
  current = architecture(model)
  return [f"{name}: {recorded.get(name)!r} -> {current.get(name)!r}"
          for name in sorted(set(recorded) | set(current))
          if recorded.get(name) != current.get(name)]


class Checkpointer:
  """Save and restore {"state": train state pytree, "data": iterator state (JSON), "base":
  what the run started from and what it trains (JSON; see training.finetune), "model": the
  model's architecture and config.model (JSON)}."""

  def __init__(self, workdir: str, keep: int, best_metric: str | None):
    policies = [ocp.checkpoint_managers.LatestN(keep)]
    if best_metric:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=True, n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True, cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._record_digest))
    self.best_metric = best_metric
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self._saving = None  # the step whose save is in flight
    self._digested = set()  # steps whose save reached its digest
    self._failure_reported = False
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(), "base": ocp.JsonCheckpointHandler(),
                       "model": ocp.JsonCheckpointHandler()})

  def _record_digest(self):
    """Orbax's callback (on the primary process) once a save's files are written, before its
    directory is renamed: writes the digest inside it."""
    step = self._saving
    if jax.process_index() == 0:
      final = os.path.join(self.directory, str(step))
      temporary = [os.path.join(self.directory, name) for name in os.listdir(self.directory)
                   if name.startswith(f"{step}.orbax-checkpoint-tmp")]
      directory = temporary[0] if len(temporary) == 1 else final  # final on object stores
      digest = directory_digest(directory)
      with open(os.path.join(directory, DIGEST_FILE), "w") as f:
        json.dump(digest, f, indent=0)
    self._digested.add(step)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step() if self.best_metric else None

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, base: dict, model: dict,
           metrics: dict | None = None, force: bool = False) -> bool:
    """Starts saving checkpoint `step` (Orbax waits for the previous save first)."""
    if metrics is not None and self.best_metric not in metrics:
      metrics = None
    self.wait()  # the previous save (CheckpointSaveError if it failed), before `_saving` moves
    self._saving = step
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        base=ocp.args.JsonSave(base), model=ocp.args.JsonSave(model)),
        metrics=metrics, force=force)

  def raise_if_save_failed(self):
    """Raises CheckpointSaveError if the save in flight has ended without completing. Only
    the primary process knows (Orbax calls the digest callback there alone); the others meet
    the error at their next save or when the primary process exits."""
    step = self._saving
    if (jax.process_index() != 0 or step is None or step in self._digested or self._failure_reported
        or self.manager.is_saving_in_progress()):
      return
    self.wait()
    raise self._failure(step, "it ended without writing its files")

  def _failure(self, step: int, cause: str) -> CheckpointSaveError:
    self._failure_reported = True
    intact = [s for s in self.all_steps() if s != step]
    return CheckpointSaveError(
        f"saving the checkpoint of step {step} in {self.directory} failed: {cause}. Training "
        f"stopped; the newest complete checkpoint is step {intact[-1] if intact else 'none'}. "
        "Free disk space (or fix the mount) and run the same command to resume from it.")

  def damage(self, step: int) -> str | None:
    """What is wrong with checkpoint `step` (None if intact: see `damage`)."""
    return damage(os.path.join(self.directory, str(step)))

  def latest_intact_step(self) -> int | None:
    """The newest checkpoint that matches its digest. Damaged newer ones are moved into
    DAMAGED_DIR (named on stderr), so that resuming continues from the intact one."""
    for step in reversed(self.all_steps()):
      problem = self.damage(step)
      if problem is None:
        return step
      self._set_aside(step, problem)
    return None

  def _set_aside(self, step: int, problem: str):
    destination = os.path.join(self.workdir, DAMAGED_DIR, str(step))
    suffix = 1
    while os.path.exists(destination):
      suffix += 1
      destination = os.path.join(self.workdir, DAMAGED_DIR, f"{step}-{suffix}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), destination)
      print(f"checkpoint {step} in {self.directory} is damaged: {problem}. Moved it to "
            f"{destination}; resuming from the newest intact checkpoint.", file=sys.stderr)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self.manager.reload()

  def _json_item(self, step: int, name: str) -> dict | None:
    if name not in self.manager.item_metadata(step):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.JsonRestore()}))[name]

  def base_info(self, step: int) -> dict | None:
    """The "base" record of checkpoint `step` (None for checkpoints from before it existed)."""
    return self._json_item(step, "base")

  def model_info(self, step: int) -> dict | None:
    """The "model" record of checkpoint `step`: {"architecture", "config"} (None for
    checkpoints from before it existed)."""
    return self._json_item(step, "model")

  def records(self, step: int) -> dict:
    """What `training.setup(resume=...)` checks a resumed run against: {"step", "base",
    "model"} of checkpoint `step`."""
    return {"step": step, "base": self.base_info(step), "model": self.model_info(step)}

  def restore(self, step: int, abstract_state):
    """(state, data_state) of checkpoint `step`; `abstract_state` gives shapes/shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def wait(self):
    """Waits for the save in flight: CheckpointSaveError if it failed (once)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if not self._failure_reported:
        raise self._failure(self._saving, f"{type(e).__name__}: {str(e)[:500]}") from e

  def close(self):
    """Waits for the save in flight (see `wait`) and releases Orbax's threads."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failure_reported:
          raise


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
