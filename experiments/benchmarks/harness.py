"""What every benchmark shares (../shared/PERF.md): one timer, one interleaving protocol (A B C
A B C ..., so a noisy machine's drift hits every candidate alike; report medians and ratios),
and the one preamble that gives a process fake CPU devices before jax is imported."""

from __future__ import annotations

import os
import statistics
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
