"""Metric logging (metrics.jsonl + TensorBoard event files) and the console progress bar."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def host_value(value):
  """A fetched metric as JSON: a float, or a list of floats for a vector."""
  return float(value) if np.ndim(value) == 0 else np.asarray(value, float).tolist()


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
    """One record: scalars, and vectors (a mixture's expert load per layer) as JSON lists,
    which TensorBoard gets as histograms."""
    if not self.enabled:
      return
    record = {"step": int(step), **{k: host_value(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for name, value in record.items():
      if name == "step":
        continue
      if isinstance(value, list):
        self.tensorboard.add_histogram(name, np.asarray(value), step)
      elif math.isfinite(value):
        self.tensorboard.add_scalar(name, value, step)

  def close(self):
    """Flushes the TensorBoard log; a failure (a full disk) is reported on stderr, never
    raised over the error that may be stopping the run (metrics.jsonl has each record)."""
    if self.tensorboard is not None:
      try:
        self.tensorboard.close()
      except OSError as e:
        print(f"the TensorBoard log in {os.path.dirname(self.path)}/tensorboard could not be "
              f"written to the end ({e}); metrics.jsonl holds every logged record",
              file=sys.stderr)


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


# Dense bfloat16 peaks in TFLOP/s per device, by a substring of `device_kind` (first match).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
               ("L4", 121.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0),
               ("TPU v5", 459.0), ("TPU v6", 918.0))


def step_flops(compiled) -> float | None:
  """FLOPs of one step of a compiled program, per device, as XLA counts them (None if XLA
  gives no count, e.g. for a not yet compiled multi-process pmap)."""
  try:
    analysis = compiled.cost_analysis()
  except (AttributeError, NotImplementedError):
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def peak_flops(device) -> float | None:
  """The device's dense bfloat16 peak in FLOP/s, or None if unknown (CPUs)."""
  for name, tflops in PEAK_TFLOPS:
    if name in device.device_kind:
      return tflops * 1e12
  return None


def throughput_summary(steps_per_s: float, items_per_step: int, unit: str,
                       flops_per_step: float | None, device) -> str:
  """"N tokens/s, X TFLOP/s per device, MFU Y%" (the parts that are known)."""
  line = f"throughput: {steps_per_s * items_per_step:,.0f} {unit}/s"
  if flops_per_step:
    achieved = flops_per_step * steps_per_s
    line += f", {achieved / 1e12:.3g} TFLOP/s per device (XLA's count of the step)"
    peak = peak_flops(device)
    if peak:
      line += (f", MFU {achieved / peak:.1%} of the {device.device_kind}'s "
               f"{peak / 1e12:.0f} TFLOP/s bf16 peak")
  return line


class ProgressBar:
  """One console line: step/total, steps/s, items/s (tokens or examples), loss and ETA; at
  the end, a throughput line with TFLOP/s and MFU when the step's FLOPs are known."""

  def __init__(self, total: int, start: int, unit: str, stream=None,
               flops_per_step: float | None = None):
    self.total, self.start, self.unit = total, start, unit
    self.stream = stream or sys.stderr  # the current one (tests and notebooks replace it)
    self.flops_per_step = flops_per_step
    self.enabled = jax.process_index() == 0
    self.t0 = time.time()
    self.interactive = self.stream.isatty()
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
    shown = f"{loss:.4f}" if math.isfinite(loss) else "-"  # the loss last fetched, if any
    line = (f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} "
            f"{rate:.2f} steps/s {rate * items_per_step:,.0f} {self.unit}/s "
            f"loss {shown} ETA {_duration(eta)}")
    end = "\r" if self.interactive and step < self.total else "\n"
    print(line.ljust(100), end=end, file=self.stream, flush=True)
    if step == self.total and done > 0:
      print(throughput_summary(rate, items_per_step, self.unit, self.flops_per_step,
                               jax.local_devices()[0]), file=self.stream, flush=True)


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
