""".ci/gpu_check --dry-run on the CPU, offline: its install-from-bundle logic and every step
(kernel tests, attention benchmark, training) at tiny sizes, from a bundle of the packages
.ci/gpu_bundle names, repacked as wheels from this environment (CI has no reason to download).
With ATTENTION_JAX_TEST_GPU_BUNDLE=1, .ci/gpu_bundle itself runs too (it downloads)."""

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from attention_jax.data import builders, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What pip writes at install time; a wheel has none of these (RECORD is rewritten).
INSTALL_FILES = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


def bundled_requirements() -> list[str]:
  """name==version of each package .ci/gpu_bundle would download (offline)."""
  done = subprocess.run(["bash", ".ci/gpu_bundle", "--list"], cwd=REPO, capture_output=True,
                        text=True, check=True, env=dict(os.environ, PYTHON=sys.executable))
  return done.stdout.split()


def repack(requirement: str, directory: str) -> str:
  """The installed distribution `name==version` as a wheel in `directory` (its own files,
  compiled bytecode left out, a fresh RECORD); returns the wheel's path."""
  name, version = requirement.split("==")
  dist = md.distribution(name)
  assert dist.version == version, f"{name} is {dist.version} here, pinned {version}"
  info = next(f for f in dist.files if f.parts[0].endswith(".dist-info")).parts[0]
  tags = [line.split(":", 1)[1].strip().split("-")
          for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag:")]
  tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))  # py2.py3-...
  path = os.path.join(directory, f"{info[:-len('.dist-info')]}-{tag}.whl")
  record = io.StringIO()
  writer = csv.writer(record, lineterminator="\n")
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
    for file in dist.files:
      if (file.parts[0] == ".." or "__pycache__" in file.parts or file.suffix == ".pyc"
          or (file.parts[0] == info and file.name in INSTALL_FILES)):
        continue
      data = file.locate().read_bytes()
      wheel.writestr(file.as_posix(), data)
      digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
      writer.writerow([file.as_posix(), f"sha256={digest}", len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    wheel.writestr(f"{info}/RECORD", record.getvalue())
  return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  """gpu_bundle/'s layout: wheels/ (repacked here) and tensorflow_datasets/ (kjv_text)."""
  root = tmp_path_factory.mktemp("gpu_bundle")
  wheels = root / "wheels"
  wheels.mkdir()
  for requirement in bundled_requirements():
    repack(requirement, str(wheels))
  data = root / "tensorflow_datasets"
  for known in (os.environ.get("TFDS_DATA_DIR"), os.path.expanduser("~/tensorflow_datasets")):
    if known and builders.KjvText(data_dir=known).is_prepared():  # another test's, or yours
      shutil.copytree(os.path.join(known, "kjv_text"), data / "kjv_text")
      break
  else:
    if not os.path.exists("/usr/share/sword"):
      pytest.skip("needs the Debian package sword-text-kjv (install.sh)")
    for split in ("train", "validation", "test"):
      pipeline.data_source("kjv_text", split, str(data))
  return root


def run_check(bundle, out, *extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
  env.update(PYTHON=sys.executable, OUT=str(out))
  return subprocess.run(["bash", ".ci/gpu_check", "--dry-run", "--bundle", str(bundle), *extra],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_dry_run_installs_the_bundle_and_runs_every_step(bundle, tmp_path):
  done = run_check(bundle, tmp_path)
  log = done.stdout + done.stderr
  assert done.returncode == 0, log[-6000:]
  assert "packages load from" in log and "is the machine's" in log
  for step in ("install the bundle", "kernel tests", "attention benchmark", "training"):
    assert f"== {step}: ok" in log, log[-6000:]
  files = set(os.listdir(tmp_path))
  assert {"gpu_check.log", "versions.txt", "kernel_tests.xml", "benchmark_attention.json",
          "train_metrics.jsonl", "summary.md"} <= files
  assert len(files) <= 8  # what the device tool brings back from $OUT
  summary = (tmp_path / "summary.md").read_text()
  assert "| install the bundle | ok |" in summary
  assert "Kernel tests: " in summary and " 0 failed" in summary
  assert "| 128 | forward | no | " in summary  # the benchmark's table, T=128
  assert "tokens/s" in summary and "no throughput line" not in summary
  versions = (tmp_path / "versions.txt").read_text()
  assert "from the bundle: " in versions and "tensorflow-datasets" in versions.lower()


@pytest.mark.slow
def test_a_bundle_with_jax_in_it_is_refused(bundle, tmp_path):
  """The machine's jax is the one its CUDA plugin matches: the check never installs one."""
  wheels = tmp_path / "bundle" / "wheels"
  shutil.copytree(bundle / "wheels", wheels)
  (wheels / "jax-0.10.2-py3-none-any.whl").write_bytes(b"")
  done = run_check(tmp_path / "bundle", tmp_path / "out")
  assert done.returncode != 0
  assert "refusing" in done.stdout and "machine's own jax" in done.stdout
  assert "kernel tests" not in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ATTENTION_JAX_TEST_GPU_BUNDLE") != "1",
                    reason="downloads wheels: set ATTENTION_JAX_TEST_GPU_BUNDLE=1")
def test_gpu_bundle_downloads_and_resolves_offline_for_python_3_12():
  done = subprocess.run(["bash", ".ci/gpu_bundle"], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHON=sys.executable), timeout=900)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert "every requirement is bundled or on the machine" in done.stdout
  wheels = os.listdir(os.path.join(REPO, "gpu_bundle", "wheels"))
  assert len(wheels) == len(bundled_requirements())
  assert not [w for w in wheels if w.startswith(("jax-", "jaxlib-"))]
