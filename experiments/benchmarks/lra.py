r"""Long Range Arena's efficiency table, measured here: training steps/s and peak memory of each
kernel relative to softmax attention (`dot_product`), at lengths 1K-4K, and where a kernel can
go, 16K and 64K.

    python -m experiments.benchmarks.lra [--lengths=1024,2048,3072,4096] [--long=16384,65536]

The model is the byte-level text classifier of configs/lra_text.py at a CPU size (a BERT of
`--depth` blocks of width `--width`, batch `--batch`), one AdamW step per call. Memory is XLA's
for the compiled step (arguments + outputs + temporaries, from `memory_analysis()`: nothing is
allocated to measure it). Steps are timed interleaved (kernel A, B, ..., A, B, ...) after a
warm-up; each cell is the median of `--repeats`. A long-length cell runs only where the step
needs under `--max_memory_gb`, with `--long_batch` sequences, and not for the quadratic
kernels (dot_product and flash stop at 4K). After every length it prints the table so far, with
LRA's published relative figures beside ours, and writes the JSON.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
import numpy as np
import jax
import jax.numpy as jnp
import optax

from attention_jax import models
from experiments.benchmarks import harness

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "3072", "4096"], "LRA's lengths.")
_LONG = flags.DEFINE_list("long", ["16384", "65536"], "Longer lengths, linear kernels only.")
_KERNELS = flags.DEFINE_list(
    "kernels", ["dot_product", "flash", "linear", "retention", "performer", "sliding_window"],
    "Registry names; the first is the baseline the ratios divide by.")
_QUADRATIC = flags.DEFINE_list("quadratic", ["dot_product", "flash"],
                               "Kernels not run at the long lengths (time grows as T^2).")
_BATCH = flags.DEFINE_integer("batch", 4, "Sequences per step.")
_LONG_BATCH = flags.DEFINE_integer("long_batch", 1, "Sequences per step at the long lengths.")
_WIDTH = flags.DEFINE_integer("width", 128, "Model width (4 heads).")
_DEPTH = flags.DEFINE_integer("depth", 2, "Blocks.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per kernel and length.")
_MAX_MEMORY_GB = flags.DEFINE_float("max_memory_gb", 8.0, "Skip steps needing more.")
_OUTPUT = flags.DEFINE_string("output", "runs/benchmark_lra.json", "JSON results.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "", "File the table here (docs/results) with "
                                   "its date, machine and commit.")

# LRA (Tay et al. 2021), Table 3: byte-level text, TPU v3, relative to the Transformer, at
# lengths 1K, 2K, 3K and 4K.
LRA_PUBLISHED = {
    "Linear Transformer": {"speed": (1.1, 1.9, 3.7, 5.6), "memory": (0.44, 0.21, 0.13, 0.10)},
    "Performer": {"speed": (1.2, 1.9, 3.8, 5.7), "memory": (0.44, 0.20, 0.13, 0.10)},
}
LRA_LENGTHS = (1024, 2048, 3072, 4096)


def make_step(kernel: str, length: int, batch: int):
  """(jitted AdamW step (params, opt_state, tokens, labels) -> (params, opt_state, loss),
  its arguments)."""
  model = models.create("bert-tiny", width=_WIDTH.value, depth=_DEPTH.value, num_heads=4,
                        mlp_dim=2 * _WIDTH.value, max_len=length, vocab_size=258,
                        num_classes=7, kernel=kernel, dropout_rate=0.0)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(2, 258, (batch, length)), jnp.int32)
  labels = jnp.asarray(rng.integers(0, 7, (batch,)), jnp.int32)
  params = model.init(jax.random.key(0), tokens[:1, :8])["params"]
  optimizer = optax.adamw(1e-3)

  def loss_fn(params, tokens, labels):
    logits = model.apply({"params": params}, tokens)["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(params, opt_state, tokens, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), (params, optimizer.init(params), tokens, labels)


def step_bytes(step, args) -> int:
  """XLA's memory for one compiled step: arguments, outputs and temporaries."""
  memory = step.lower(*args).compile().memory_analysis()
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)


def measure(length: int, kernels: list[str], batch: int) -> dict[str, dict]:
  """{kernel: {"memory_gb", "steps_per_s" or "skipped"}} at one length, timed interleaved."""
  cells, runners = {}, {}
  for kernel in kernels:
    step, args = make_step(kernel, length, batch)
    gigabytes = step_bytes(step, args) / 2 ** 30
    cells[kernel] = {"memory_gb": gigabytes}
    if gigabytes > _MAX_MEMORY_GB.value:
      cells[kernel]["skipped"] = f"needs {gigabytes:.1f} GB"
      continue
    state = list(args)

    def run(state=state, step=step):
      state[:2] = step(*state)[:2]
      jax.block_until_ready(state[0])

    runners[kernel] = lambda run=run: harness.timed(run)
    print(f"  T={length} {kernel}: compiled, {gigabytes:.2f} GB", flush=True)
  times = harness.interleaved(runners, _REPEATS.value)  # the warm-up compiles
  for kernel, samples in times.items():
    cells[kernel]["steps_per_s"] = 1.0 / harness.median(samples)
  return cells


def ratio(cells, kernel, baseline, field) -> str:
  if field not in cells.get(kernel, {}) or field not in cells.get(baseline, {}):
    return "—"
  return f"{cells[kernel][field] / cells[baseline][field]:.2f}x"


def format_table(results: dict[int, dict], kernels: list[str]) -> str:
  baseline = kernels[0]
  lengths = sorted(results)
  head = " | ".join(f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths)
  lines = [f"| steps/s (x {baseline}) | {head} | memory GB (x {baseline}) | {head} |",
           "|---|" + "---|" * len(lengths) + "---|" + "---|" * len(lengths)]
  for kernel in kernels:
    speed, memory = [], []
    for n in lengths:
      cell = results[n].get(kernel)
      if cell is None:
        speed.append("—")
        memory.append("—")
        continue
      relative = lambda field: ratio(results[n], kernel, baseline, field)
      speed.append(f"{cell['steps_per_s']:.2f} ({relative('steps_per_s')})"
                   if "steps_per_s" in cell else cell.get("skipped", "—"))
      memory.append(f"{cell['memory_gb']:.2f} ({relative('memory_gb')})")
    lines.append(f"| {kernel} | {' | '.join(speed)} | | {' | '.join(memory)} |")
  for name, figures in LRA_PUBLISHED.items():
    published = lambda field: " | ".join(
        f"({figures[field][LRA_LENGTHS.index(n)]}x)" if n in LRA_LENGTHS else ""
        for n in lengths)
    lines.append(f"| LRA: {name} | {published('speed')} | | {published('memory')} |")
  return "\n".join(lines)


def save(results: dict, kernels: list[str]):
  """Prints the table so far and writes the JSON (after every length: nothing is lost if a
  long length runs out of memory)."""
  table = format_table(results, kernels)
  print(f"\n{jax.devices()[0].device_kind}, batch {_BATCH.value} (long lengths: "
        f"{_LONG_BATCH.value}), width {_WIDTH.value}, depth {_DEPTH.value}, AdamW steps\n"
        f"{table}", flush=True)
  os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
  with open(_OUTPUT.value, "w") as f:
    json.dump({"device": jax.devices()[0].device_kind, "batch": _BATCH.value,
               "long_batch": _LONG_BATCH.value, "width": _WIDTH.value, "depth": _DEPTH.value,
               "results": {str(n): cells for n, cells in results.items()},
               "lra_published": LRA_PUBLISHED, "table": table}, f, indent=1)


def main(argv):
  del argv
  kernels = list(_KERNELS.value)
  results = {}
  for length in map(int, _LENGTHS.value):
    results[length] = measure(length, kernels, _BATCH.value)
    save(results, kernels)
  for length in map(int, _LONG.value):
    results[length] = measure(length, [k for k in kernels if k not in _QUADRATIC.value],
                              _LONG_BATCH.value)
    save(results, kernels)
  print(f"wrote {_OUTPUT.value}")
  if _RESULTS_DIR.value:
    print("wrote " + harness.write_result(_RESULTS_DIR.value, "lra-efficiency",
                                          "Long Range Arena efficiency (LRA's Table 3 format)",
                                          format_table(results, kernels)))


if __name__ == "__main__":
  app.run(main)
