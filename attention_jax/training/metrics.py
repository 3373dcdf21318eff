"""Metric logging (metrics.jsonl + TensorBoard event files) and the console progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends {"step": s, "train/loss": ...} lines to workdir/metrics.jsonl and writes the same
  scalars as TensorBoard events under workdir/tensorboard (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tensorboard = None
    if not self.enabled:
      return
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # no TensorFlow needed
    self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)

  def _truncate_after(self, step: int):
    """On resume, drop records a killed run logged past its last checkpoint."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      records = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(records)

  def write(self, step: int, metrics: dict):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in record.items():
      if name != "step" and math.isfinite(value):
        self.tensorboard.add_scalar(name, value, step)

  def close(self):
    if self.tensorboard is not None:
      self.tensorboard.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


class ProgressBar:
  """One console line: step/total, steps/s, items/s (tokens or examples), loss and ETA."""

  def __init__(self, total: int, start: int, unit: str, stream=sys.stderr):
    self.total, self.start, self.unit, self.stream = total, start, unit, stream
    self.enabled = jax.process_index() == 0
    self.t0 = time.time()
    self.interactive = stream.isatty()
    self.last_print = 0.0

  def update(self, step: int, items_per_step: int, loss: float, force: bool = False):
    if not self.enabled:
      return
    now = time.time()
    if not force and now - self.last_print < (0.5 if self.interactive else 10.0):
      return
    self.last_print = now
    done = step - self.start
    rate = done / max(now - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    width = 24
    filled = int(width * step / max(self.total, 1))
    line = (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
            f"{rate:.2f} steps/s {rate * items_per_step:,.0f} {self.unit}/s "
            f"loss {loss:.4f} ETA {_duration(eta)}")
    end = "\r" if self.interactive and step < self.total else "\n"
    print(line.ljust(100), end=end, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
