"""What every benchmark shares (../shared/PERF.md): one timer, one interleaving protocol (A B C
A B C ..., so a noisy machine's drift hits every candidate alike; report medians and ratios),
the one preamble that gives a process fake CPU devices before jax is imported, and
`write_result`, which files a measured table in docs/results/ with its date, machine and
commit."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

# The repository root: where a benchmark's subprocesses run (`python -m experiments...`).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fake_cpu_devices(count: int):
  """Makes jax start with `count` CPU devices (XLA_FLAGS); call before jax is imported."""
  if "jax" in sys.modules:
    raise RuntimeError("fake_cpu_devices must run before jax is imported.")
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={count}").strip()


def timed(run: Callable[[], object]) -> float:
  """Wall seconds of one `run()`, which must wait for its own work (block_until_ready)."""
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1,
                after_round: Callable[[int], None] | None = None) -> dict[str, list]:
  """{name: [one sample per round]}: every candidate is called `warmup` times untimed
  (compilation), then once per round in turn; a sample is what the call returns (wrap it in
  `timed` for seconds). `after_round(r)` reports progress."""
  for _ in range(warmup):
    for run in candidates.values():
      run()
  samples = {name: [] for name in candidates}
  for r in range(rounds):
    for name, run in candidates.items():
      samples[name].append(run())
    if after_round is not None:
      after_round(r)
  return samples


def median(samples) -> float:
  return float(statistics.median(samples))


def machine() -> str:
  """This machine in one line: CPU model and cores, memory, and jax's device if jax is up."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
  out = f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB"
  if "jax" in sys.modules:
    import jax
    device = jax.devices()[0]
    out += f"; jax {jax.__version__} on {device.platform} ({device.device_kind})"
  return out


def commit() -> str:
  """The repository's commit (short), marked "+ uncommitted changes" when the tree is dirty."""
  def git(*args):
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout
  head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
  return head + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no")
                 .strip() else "")


def write_result(directory: str, name: str, title: str, body: str) -> str:
  """Writes `body` (markdown) as `directory/<date>-<name>.md` under a stamp (date, machine,
  commit, the command that ran); returns the path. docs/results/ is where they are kept."""
  date = datetime.date.today().isoformat()
  command = " ".join(["python -m", sys.modules["__main__"].__spec__.name, *sys.argv[1:]]
                     if getattr(sys.modules["__main__"], "__spec__", None) else sys.argv)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"{date}-{name}.md")
  stamp = (f"# {title}\n\n- Measured: {date}\n- Machine: {machine()}\n"
           f"- Commit: `{commit()}`\n- Command: `{command}`\n\n")  # before the file changes
  with open(path, "w") as f:
    f.write(f"{stamp}{body.rstrip()}\n")
  return path
