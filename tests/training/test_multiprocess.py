"""Two processes (CPU collectives over gloo) give the losses of one process with the same
global batch: the multi-host path, on one machine."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from attention_jax.training.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, devices, extra=()):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/gpt_kjv.py:tiny",
         f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
         "--config.num_train_steps=6", "--config.eval_every_steps=6",
         "--config.checkpoint_every_steps=3", *extra]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def losses(workdir):
  return np.array([r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r])


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, data_dir):
  """Data and FSDP axes across the two processes. (`parallelism="pmap"` runs the same step on
  a data-only mesh, so it adds no multi-host path of its own.)"""
  layout = ["--config.mesh.data=2", "--config.mesh.fsdp=2"]
  single = launch(tmp_path / "one", data_dir, 4, layout)
  out, _ = single.communicate(timeout=300)
  assert single.returncode == 0, out

  port = free_port()
  procs = [launch(tmp_path / "two", data_dir, 2,
                  [*layout, f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}"]) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out
  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=2e-5)
  assert len(losses(tmp_path / "one")) == 6
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) >= ["3", "6"]
