"""Keeps glibc from handing XLA:CPU's step memory back to the OS after every step.

XLA:CPU allocates a training step's temporaries (hundreds of MB) with malloc and frees them
when the step ends. glibc serves blocks that large with mmap and returns them with munmap, so
every step faults all of it in again: on the quickstart about 115k minor page faults and a
third of the CPU time spent in the kernel. `tune()` sets, with glibc's `mallopt`:

    M_ARENA_MAX = 1            one heap for all threads (else XLA's threads each get one)
    M_MMAP_MAX = 0             large blocks come from that heap, not from fresh mmaps
    M_TRIM_THRESHOLD = 2 GiB   freed memory stays in the heap for the next step

the same as MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... in the
environment, but from inside the process: `import attention_jax` does it, so the README's
commands, the tests and the notebooks all get it with no wrapper or LD_PRELOAD. The cost is
resident memory: the step's peak stays allocated between steps (docs/training.md: the CPU training step).
`release()` hands the free part back (malloc_trim), which the trainer does around
evaluations, so training and evaluation temporaries are not both kept.

It is applied only where it helps and can do no harm:
- JAX runs on the CPU: JAX_PLATFORMS is "cpu", or no GPU/TPU plugin is installed;
- malloc is glibc's (not jemalloc/tcmalloc preloaded, not musl or macOS);
- the user has not set ATTENTION_JAX_MALLOC=default, nor tuned malloc themselves (any
  MALLOC_* variable, or glibc.malloc tunables in GLIBC_TUNABLES: their setting wins).
It must run before JAX starts its thread pool (the first computation), which importing
attention_jax before using jax does; later, the heap settings still apply, the arena limit
only to threads created afterwards.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

# mallopt parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = (  # (mallopt parameter, value, the equivalent environment variable)
    (M_ARENA_MAX, 1, "MALLOC_ARENA_MAX"),
    (M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_"),
    (M_TRIM_THRESHOLD, 2 ** 31 - 1, "MALLOC_TRIM_THRESHOLD_"),
)
OPT_OUT = "ATTENTION_JAX_MALLOC"
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu", "jax_plugins.xla_cuda12",
                       "jax_plugins.xla_cuda13")

applied: dict[str, int] = {}  # what tune() set, by environment-variable name
reason = "not tried"  # why it set what it did, for `describe()`
restored = False  # whether `restore()` put the large-block settings back


def _plugin_installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def runs_on_cpu() -> bool:
  """Whether JAX will compute on the CPU, decided without starting JAX."""
  platforms = os.environ.get("JAX_PLATFORMS", os.environ.get("JAX_PLATFORM_NAME", ""))
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(_plugin_installed(name) for name in ACCELERATOR_PLUGINS)


def users_own_setting() -> str | None:
  """The user's own malloc tuning in the environment, if any."""
  for name in sorted(os.environ):
    if name.startswith("MALLOC_"):
      return name
  if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
    return "GLIBC_TUNABLES"
  return None


def glibc_malloc():
  """glibc's C library if glibc's malloc is the process's malloc, else None."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
  except OSError:
    return None
  as_address = lambda f: ctypes.cast(f, ctypes.c_void_p).value
  if as_address(process.malloc) != as_address(libc.malloc):
    return None  # another allocator (jemalloc, tcmalloc) is interposed
  libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  libc.malloc_trim.argtypes = (ctypes.c_size_t,)
  return libc


def tune() -> dict[str, int]:
  """Applies the settings above where they help (see the module docstring); idempotent.

  Returns what was set, by environment-variable name (empty if nothing was).
  """
  global reason
  if applied:
    return applied
  if os.environ.get(OPT_OUT, "").lower() in ("default", "0", "off", "false"):
    reason = f"{OPT_OUT}={os.environ[OPT_OUT]}"
    return applied
  if not runs_on_cpu():
    reason = "JAX runs on an accelerator"
    return applied
  own = users_own_setting()
  if own:
    reason = f"the environment sets {own}"
    return applied
  libc = glibc_malloc()
  if libc is None:
    reason = "malloc is not glibc's"
    return applied
  for parameter, value, variable in SETTINGS:
    if libc.mallopt(parameter, value) == 1:
      applied[variable] = value
  reason = "glibc malloc, JAX on the CPU" if applied else "mallopt refused every setting"
  return applied


GLIBC_DEFAULTS = {"MALLOC_ARENA_MAX": None,  # cannot be undone for threads already made
                  "MALLOC_MMAP_MAX_": 65536, "MALLOC_TRIM_THRESHOLD_": 128 * 1024}


def restore(why: str):
  """Puts glibc's own large-block settings back (mmap for large blocks, trimming at 128
  KiB), for programs whose temporaries change from step to step, where a heap that keeps
  everything fragments without bound: a mixture of experts on XLA:CPU allocates by its
  routing, and its training runs grew to 24 GB in 200 steps (dropless and capacity alike).
  `why` is what `describe()` says after."""
  global reason, restored
  if not applied:
    return
  libc = glibc_malloc()
  for parameter, _, variable in SETTINGS:
    if variable in applied and GLIBC_DEFAULTS[variable] is not None:
      libc.mallopt(parameter, GLIBC_DEFAULTS[variable])
      del applied[variable]
  libc.malloc_trim(0)
  reason, restored = why, True


def release():
  """Returns the heap's free memory to the OS (glibc's malloc_trim) where tune() applied:
  for between phases whose temporaries differ (training steps, evaluation)."""
  if applied:
    glibc_malloc().malloc_trim(0)


def describe() -> str:
  """One line for logs: what tune() set, or why not."""
  if applied:
    return ("malloc tuned (" + ", ".join(f"{k}={v}" for k, v in applied.items()) + ")"
            + (f"; large blocks back to glibc's defaults: {reason}" if restored else ""))
  return f"malloc untouched ({reason})"
