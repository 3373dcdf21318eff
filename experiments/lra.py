"""The Long Range Arena sweep's cells and table (no flags: `experiments.lra_sweep` is the
entry point; tests call these directly)."""

from __future__ import annotations

import importlib
import json
import os
import time

from attention_jax.training import train_and_evaluate
from attention_jax.training import evaluation

TASKS = ("listops", "text", "image", "pathfinder")
# Softmax attention is one column: `flash` computes what `dot_product` does (tested equal) in
# O(T) memory, and is the faster of the two from 1K tokens on this CPU.
KERNELS = ("flash", "linear", "retention", "performer", "sliding_window")
# LRA (Tay et al. 2021), Table 1, ListOps test accuracy (their setting: 500-2,000 tokens).
LRA_LISTOPS = {"Transformer": 36.37, "Linear Transformer": 16.13, "Performer": 18.01}


def cell_config(task: str, kernel: str, variant: str = "", steps: int = 0, data_dir: str = ""):
  """configs/lra_<task>.py[:variant] with the kernel (and optionally steps, data) set."""
  if task not in TASKS:
    raise ValueError(f"unknown LRA task {task!r}; valid: {', '.join(TASKS)}.")
  config = importlib.import_module(f"configs.lra_{task}").get_config(variant or None)
  config.model.kernel = kernel
  if steps:
    config.num_train_steps = steps
    config.eval_every_steps = config.checkpoint_every_steps = max(steps // 2, 1)
  if data_dir:
    config.dataset.data_dir = data_dir
  return config


def _result_path(root: str, task: str, kernel: str) -> str:
  return os.path.join(root, task, kernel.replace(":", "_").replace(",", "_"), "result.json")


def saved_result(root: str, task: str, kernel: str) -> dict | None:
  """A finished cell's result, or None."""
  path = _result_path(root, task, kernel)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_cell(root: str, task: str, kernel: str, **options) -> dict | None:
  """Trains and tests one cell (or reads its saved result). Returns None when a SIGTERM
  stopped the training: its checkpoint resumes it next time. The cell's wall time adds up
  over the sessions that trained it (one killed with SIGKILL is not counted)."""
  result_path = _result_path(root, task, kernel)
  workdir = os.path.dirname(result_path)
  if (saved := saved_result(root, task, kernel)) is not None:
    return saved
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  try:
    if "preempted_at_step" in train_and_evaluate(cell_config(task, kernel, **options),
                                                 workdir):
      return None
    step, metrics = evaluation.evaluate_workdir(workdir, "best", "test")
  finally:
    wall_s = _add_wall_time(workdir, time.time() - start)
  result = {"task": task, "kernel": kernel, "step": step, "wall_s": wall_s,
            "test_accuracy": 100.0 * metrics["test/accuracy"], "test_loss": metrics["test/loss"]}
  with open(result_path, "w") as f:
    json.dump(result, f, indent=1)
  return result


def _add_wall_time(workdir: str, seconds: float) -> float:
  """Adds a session's seconds to WORKDIR/wall_s.json; returns the cell's total."""
  path = os.path.join(workdir, "wall_s.json")
  if os.path.exists(path):
    with open(path) as f:
      seconds += json.load(f)
  with open(path + ".tmp", "w") as f:
    json.dump(seconds, f)
  os.replace(path + ".tmp", path)  # a kill mid-write leaves the old total, not half a file
  return seconds


def write_tables(root: str, results: list[dict], tasks, kernels) -> str:
  """Writes ROOT/results.json and ROOT/results.md (cells not run yet show "—"); returns the
  table."""
  table = format_table(results, tasks, kernels)
  with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(root, "results.md"), "w") as f:
    f.write(table + "\n")
  return table


def format_table(results: list[dict], tasks, kernels) -> str:
  cells = {(r["task"], r["kernel"]): r for r in results}
  lines = ["| kernel | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
  for kernel in kernels:
    row = []
    for task in tasks:
      r = cells.get((task, kernel))
      row.append("—" if r is None else
                 f"{r['test_accuracy']:.1f} ({r['wall_s'] / 60:.0f} min)")
    name = f"{kernel} (softmax)" if kernel in ("flash", "dot_product") else kernel
    lines.append(f"| {name} | " + " | ".join(row) + " |")
  for name, accuracy in LRA_LISTOPS.items():
    row = [f"{accuracy:.2f}" if task == "listops" else "" for task in tasks]
    lines.append(f"| LRA paper: {name} | " + " | ".join(row) + " |")
  return "\n".join(lines)
