"""Resume as a user meets it: `python -m experiments.train` killed (SIGKILL) or preempted
(SIGTERM) and started again with the same command."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attention_jax.training.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS, HALF = 80, 40


def command(workdir, data_dir, extra=()):
  return [sys.executable, "-m", "experiments.train", "--config=configs/gpt_kjv.py:tiny",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          f"--config.num_train_steps={STEPS}", f"--config.checkpoint_every_steps={HALF}",
          f"--config.eval_every_steps={HALF}", "--config.eval_max_batches=2", *extra]


# A 2-D mesh on 4 fake CPU devices: parameters and optimizer state split over fsdp.
MESH_2D = ("--config.mesh.data=2", "--config.mesh.fsdp=2")


def subprocess_env(devices=1):
  """The environment of a training subprocess on `devices` fake CPU devices; on one device it
  shares the tests' compilation cache (tests/conftest.py says why only there)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if devices > 1:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  elif os.environ.get("ATTENTION_JAX_TEST_JIT_CACHE"):
    env["JAX_COMPILATION_CACHE_DIR"] = os.environ["ATTENTION_JAX_TEST_JIT_CACHE"]
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  return env


def start(workdir, data_dir, devices=1, extra=()):
  return subprocess.Popen(command(workdir, data_dir, extra), cwd=REPO,
                          env=subprocess_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=300):
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, out
  return out


def wait_for(condition, process, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None:
      pytest.fail("training ended before the test could interrupt it:\n"
                  + process.stdout.read())
    if time.time() > deadline:
      process.kill()
      pytest.fail("timed out waiting for training")
    time.sleep(0.01)


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return [r["step"] for r in read_metrics(workdir)] if os.path.exists(path) else []


def final_params(workdir):
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(STEPS), "state"))
  return restored["params"]


def losses(workdir):
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_rerun_is_exact_under_a_2d_mesh(tmp_path, data_dir):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  finish(start(straight, data_dir, 4, MESH_2D))

  process = start(killed, data_dir, 4, MESH_2D)
  wait_for(lambda: os.path.isdir(os.path.join(killed, "checkpoints", str(HALF)))
           and max(logged_steps(killed), default=0) > HALF + 2, process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.isdir(os.path.join(killed, "checkpoints", str(STEPS)))
  out = finish(start(killed, data_dir, 4, MESH_2D))
  assert f"resumed from {killed} at step {HALF}" in out

  want, got = losses(straight), losses(killed)
  assert sorted(got) == list(range(1, STEPS + 1))  # no duplicates from the killed run
  assert all(got[s] == want[s] for s in range(HALF + 1, STEPS + 1))
  a, b = final_params(straight), final_params(killed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes(tmp_path, data_dir):
  workdir = str(tmp_path / "preempted")
  process = start(workdir, data_dir)
  wait_for(lambda: max(logged_steps(workdir), default=0) >= 20, process)
  process.send_signal(signal.SIGTERM)
  out = finish(process)
  assert "SIGTERM: saved a checkpoint at step" in out
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
                 if d.isdigit())
  assert saved and 20 <= saved[-1] < STEPS
  out = finish(start(workdir, data_dir))
  assert f"resumed from {workdir} at step {saved[-1]}" in out
  assert sorted(losses(workdir)) == list(range(1, STEPS + 1))


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=300)


def test_cli_rejects_config_typos(tmp_path):
  result = run_cli("experiments.train", "--config=configs/gpt_kjv.py:tiny",
                   f"--workdir={tmp_path}", "--config.optimzer.lr=0.1")
  assert result.returncode != 0
  assert "optimzer" in result.stderr


@pytest.mark.slow
def test_eval_and_generate_read_a_finished_workdir(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  finish(start(workdir, data_dir))
  result = run_cli("experiments.eval", f"--workdir={workdir}", "--checkpoint=best",
                   "--split=test")
  assert result.returncode == 0, result.stderr
  assert "test/bits_per_char" in result.stdout
  result = run_cli("experiments.generate", f"--init_from={workdir}", "--prompt=In the ",
                   "--max_new_tokens=10", "--temperature=0")
  assert result.returncode == 0, result.stderr
  # The prompt, then 10 greedy bytes (ASCII after training on the KJV), then a newline.
  assert result.stdout.startswith("In the ") and len(result.stdout) == len("In the ") + 10 + 1
