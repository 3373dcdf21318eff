"""attention_jax.allocator: `import attention_jax` keeps glibc from returning large blocks to
the OS, where that helps and nowhere else. Each case runs in a fresh interpreter, since the
settings are process-wide and must precede the allocations they govern."""

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, writes and frees a 64 MB block 20 times with libc's malloc, as XLA:CPU does with
# a step's temporaries; reports the minor page faults.
PROBE = """
import ctypes, json, resource
import attention_jax
from attention_jax import allocator
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 64 * 2 ** 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": allocator.applied, "describe": allocator.describe(),
                  "faults": faults}))
"""


def run_python(code: str, **env) -> dict:
  """Runs `code` in a fresh interpreter without the caller's malloc settings (plus `env`);
  returns the JSON it prints last."""
  clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")
           and k not in ("ATTENTION_JAX_MALLOC", "JAX_PLATFORMS", "GLIBC_TUNABLES")}
  out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                       capture_output=True, text=True, timeout=120).stdout
  return json.loads(out.strip().splitlines()[-1])


def probe(**env):
  return run_python(PROBE, **env)


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
def test_import_tunes_glibc_and_large_blocks_stop_faulting():
  tuned, default = probe(), probe(ATTENTION_JAX_MALLOC="default")
  assert tuned["applied"] == {"MALLOC_ARENA_MAX": 1, "MALLOC_MMAP_MAX_": 0,
                              "MALLOC_TRIM_THRESHOLD_": 2 ** 31 - 1}
  assert tuned["describe"].startswith("malloc tuned (MALLOC_ARENA_MAX=1")
  assert default["applied"] == {} and "ATTENTION_JAX_MALLOC=default" in default["describe"]
  # Untuned, every 64 MB block is a fresh mmap: 16k page faults each time. Tuned, the heap
  # keeps it, and only the first one faults.
  assert default["faults"] > 20 * 12_000
  assert tuned["faults"] < 3 * 16_384


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
def test_restore_gives_large_blocks_back_to_glibc_for_changing_temporaries():
  """A program whose temporaries change from step to step (a dropless mixture of experts
  on XLA:CPU) gets glibc's large-block settings back: every 64 MB block is mmapped again,
  and the log line says why."""
  restored = run_python(PROBE.replace("size = 64", "allocator.restore('changing sizes')\n"
                                                   "size = 64"))
  assert restored["applied"] == {"MALLOC_ARENA_MAX": 1}
  assert restored["describe"] == ("malloc tuned (MALLOC_ARENA_MAX=1); large blocks back to "
                                  "glibc's defaults: changing sizes")
  assert restored["faults"] > 20 * 12_000


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
@pytest.mark.parametrize("variable,value", [("MALLOC_ARENA_MAX", "4"),
                                            ("MALLOC_MMAP_THRESHOLD_", "1000000"),
                                            ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")])
def test_the_users_own_malloc_settings_win(variable, value):
  result = probe(**{variable: value})
  assert result["applied"] == {}
  assert result["describe"] == f"malloc untouched (the environment sets {variable})"


def test_untouched_when_jax_runs_on_an_accelerator():
  result = probe(JAX_PLATFORMS="cuda")
  assert result["applied"] == {}
  assert result["describe"] == "malloc untouched (JAX runs on an accelerator)"


def test_untouched_when_malloc_is_not_glibcs(monkeypatch):
  from attention_jax import allocator
  monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
  assert allocator.glibc_malloc() is None


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@pytest.mark.skipif(not os.path.exists(JEMALLOC), reason="apt-get install libjemalloc2")
def test_untouched_under_a_preloaded_jemalloc():
  result = probe(LD_PRELOAD=JEMALLOC)
  assert result["applied"] == {}
  assert result["describe"] == "malloc untouched (malloc is not glibc's)"


RELEASE = """
import ctypes, json
import attention_jax
from attention_jax import allocator
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
block = libc.malloc(256 * 2 ** 20)
ctypes.memset(block, 1, 256 * 2 ** 20)
small = libc.malloc(64)  # above the block: the heap's top cannot simply shrink
libc.free(block)
kept = rss()
allocator.release()
print(json.dumps({"kept": kept, "released": rss()}))
"""


@pytest.mark.skipif(not GLIBC, reason="the tuning is for glibc's malloc")
def test_release_hands_the_free_heap_back():
  result = run_python(RELEASE)
  assert result["kept"] - result["released"] > 200 * 2 ** 20
