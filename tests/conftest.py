import os
import shutil
import tempfile

# Multi-device tests need fake CPU devices; the flag must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# A test run reads nothing that an earlier run (or the user) left behind: the datasets are
# prepared from the Debian packages into a directory of this run, shared by the xdist workers
# and every subprocess (notebook kernels, training runs) through the environment, and deleted
# at the end. Set ATTENTION_JAX_TEST_RUN_DIR to a directory to keep it between runs.
_RUN_DIR_CREATED = "ATTENTION_JAX_TEST_RUN_DIR" not in os.environ
if _RUN_DIR_CREATED:  # the first process of the run: xdist's workers inherit the variable
  os.environ["ATTENTION_JAX_TEST_RUN_DIR"] = tempfile.mkdtemp(prefix="attention_jax-tests-")
RUN_DIR = os.environ["ATTENTION_JAX_TEST_RUN_DIR"]
os.environ["TFDS_DATA_DIR"] = os.path.join(RUN_DIR, "tensorflow_datasets")
# Many tests (and the training subprocesses they start) compile the same tiny steps: JAX's
# persistent compilation cache, shared by the xdist workers, compiles each once per run. Set
# ATTENTION_JAX_TEST_JIT_CACHE to move it, or to "" to compile everything afresh.
os.environ.setdefault("ATTENTION_JAX_TEST_JIT_CACHE", os.path.join(RUN_DIR, "jit-cache"))
# JAX's own variable would cache multi-device programs too, here and in subprocesses.
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import jax  # noqa: E402  (after XLA_FLAGS)
from jax._src import compiler  # noqa: E402


def _single_device_programs_only(get_cache_key):
  """XLA's CPU runtime can deadlock running a multi-device program loaded from the cache: its
  devices reach the collectives in different orders until the 40 s rendezvous timeout aborts
  the process (ring attention's ppermute beside an all-reduce, jax 0.10.2). So only
  single-device programs are cached, and subprocesses get the cache only when they run on one
  device (tests/training/test_resume.py)."""
  def cache_key(*args, devices, **kwargs):
    return get_cache_key(*args, devices=devices, **kwargs) if devices.size == 1 else None
  return cache_key


# (A private function of the pinned jax; without it the tests compile everything afresh.)
if os.environ["ATTENTION_JAX_TEST_JIT_CACHE"] and hasattr(compiler, "_get_cache_key"):
  compiler._get_cache_key = _single_device_programs_only(compiler._get_cache_key)
  jax.config.update("jax_compilation_cache_dir", os.environ["ATTENTION_JAX_TEST_JIT_CACHE"])
  # Steps, not the many tiny eager-op compilations. No size limit: JAX's LRU eviction lists
  # the whole directory on every write, which costs more than it saves here.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
  if _RUN_DIR_CREATED and not hasattr(config, "workerinput"):
    shutil.rmtree(RUN_DIR, ignore_errors=True)
