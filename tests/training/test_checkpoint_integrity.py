"""Checkpoints are verified on restore: a damaged latest one is set aside and the run resumes
from the newest intact one; a changed model is refused before anything is written; evaluation
builds the recorded model; a save that fails in the background stops the run at the next
metrics fetch."""

import errno
import json
import os
import subprocess
import uuid

import jax
import numpy as np
import pytest

from attention_jax.training import CheckpointSaveError, ResumeError, train_and_evaluate
from attention_jax.training import checkpoint as checkpoint_lib
from attention_jax.training import workdir as workdir_lib
from tests.training.test_train import tiny_config, train_losses

STEPS = 6


def _run(data_dir, workdir, **overrides):
  return train_and_evaluate(tiny_config(data_dir, num_train_steps=STEPS, eval_every_steps=STEPS,
                                        checkpoint_every_steps=2, keep_checkpoints=3,
                                        **overrides), workdir)


def _largest_data_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for name in names]
  return max(files, key=os.path.getsize)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  """A finished run (checkpoints 2, 4, 6) and its final parameters."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  _run(data_dir, workdir)
  return workdir, workdir_lib.load(workdir)[3]


def _copy(workdir, tmp_path):
  target = str(tmp_path / "copy")
  subprocess.run(["cp", "-r", workdir, target], check=True)
  return target


def test_every_checkpoint_records_a_digest_that_matches(finished):
  workdir, _ = finished
  checkpointer = checkpoint_lib.Checkpointer(workdir, 3, "eval/loss")
  try:
    assert checkpointer.all_steps() == [2, 4, 6]
    for step in (2, 4, 6):
      assert os.path.exists(os.path.join(workdir, "checkpoints", str(step), "sha256.json"))
      assert checkpointer.damage(step) is None
    record = checkpointer.model_info(6)
    assert record["architecture"]["family"] == "GPT"
    assert record["config"]["width"] == tiny_config("").model.width
  finally:
    checkpointer.close()


@pytest.mark.parametrize("how", ["overwritten", "truncated"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_exactly(
    finished, tmp_path, data_dir, capfd, how):
  workdir, want = finished
  workdir = _copy(workdir, tmp_path)
  path = _largest_data_file(os.path.join(workdir, "checkpoints", "6"))
  if how == "overwritten":
    with open(path, "r+b") as f:
      f.seek(min(64, os.path.getsize(path) - 1))
      f.write(os.urandom(4096)[:max(1, os.path.getsize(path) - 64)])
  else:
    os.truncate(path, os.path.getsize(path) // 2)
  _run(data_dir, workdir)
  err = capfd.readouterr().err
  assert "checkpoint 6 in" in err and "is damaged" in err, err
  assert f"resumed from {workdir} at step 4" in err
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "6"))  # kept, not deleted
  got = workdir_lib.load(workdir)[3]
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_a_changed_model_is_refused_before_config_json_is_touched(finished, tmp_path, data_dir):
  workdir = _copy(finished[0], tmp_path)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    before = f.read()
  with pytest.raises(ResumeError, match=r"width: 32 -> 64"):
    _run(data_dir, workdir, **{"model.width": 64, "model.mlp_dim": 256})
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    assert f.read() == before


def test_evaluation_builds_the_recorded_model_not_an_edited_config_json(
    finished, tmp_path, capfd):
  workdir = _copy(finished[0], tmp_path)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    config = json.load(f)
  config["model"]["activation"] = "relu"  # the same shapes, another model
  with open(path, "w") as f:
    json.dump(config, f)
  _, _, model, _, _ = workdir_lib.load(workdir)
  assert model.config.activation == "gelu_tanh"  # GPT's, as recorded
  assert "using the checkpoint's record" in capfd.readouterr().err


def _tmpfs(path, size):
  """Mounts a tmpfs of `size` at `path` (root on Linux); False where the machine refuses."""
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True)
  return result.returncode == 0


@pytest.mark.parametrize("how", ["tmpfs", "injected"])
def test_a_failed_background_save_stops_the_run_at_the_next_fetch(
    tmp_path, data_dir, monkeypatch, how):
  root = str(tmp_path / f"disk-{uuid.uuid4().hex[:6]}")
  if how == "tmpfs":
    # One tiny-GPT checkpoint takes about 500 KB: the second does not fit.
    if not _tmpfs(root, "800k"):
      pytest.skip("cannot mount a tmpfs here; the injected case covers the save failure")
  else:
    os.makedirs(root)
    real = checkpoint_lib.directory_digest

    def full_after_the_first(directory):
      if not directory.split(os.sep)[-1].startswith("2"):
        raise OSError(errno.ENOSPC, "No space left on device (injected)")
      return real(directory)
    monkeypatch.setattr(checkpoint_lib, "directory_digest", full_after_the_first)
  workdir = os.path.join(root, "run")
  try:
    with pytest.raises(CheckpointSaveError, match=r"step 4 .* failed.*newest complete "
                       r"checkpoint is step 2"):
      train_and_evaluate(tiny_config(data_dir, num_train_steps=20, eval_every_steps=20,
                                     checkpoint_every_steps=2, log_every_steps=1), workdir)
    logged = sorted(train_losses(workdir))
    assert logged[-1] <= 6  # stopped once the save had ended: not a whole run later
    checkpointer = checkpoint_lib.Checkpointer(workdir, 3, "eval/loss")
    try:
      assert checkpointer.latest_intact_step() == 2  # nothing that was saved is lost
    finally:
      checkpointer.close()
  finally:
    if how == "tmpfs":
      subprocess.run(["umount", "--lazy", root], check=False)  # even with files open
