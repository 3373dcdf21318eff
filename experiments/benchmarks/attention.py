r"""Benchmark attention kernels side by side in one process (see ../shared/PERF.md protocol).

    python -m experiments.benchmarks.attention --config=configs/benchmark_attention.py[:smoke]

Compares registry kernels (`flash`, `dot_product`, and on accelerators `cudnn`, `pallas_gpu`,
`splash`; any name `kernels.get` takes) with `jax.nn.dot_product_attention` (XLA) and, when
torch is installed, PyTorch's `scaled_dot_product_attention`: forward and forward+backward,
full and causal. With `config.baseline` set (the `:gpu` variant: "cudnn"), every row also shows
its speed as a fraction of the baseline's. Runs are interleaved (A B A B ...) after a warm-up;
each cell is the median.
Prints a table (time, GFLOP/s, fraction of this process's GEMM rate, XLA temp memory), the
ratios the targets are stated in, and the max abs error against a float64 numpy reference;
writes JSON and a PNG plot to `config.output_dir`. It never asserts a time.

Ring attention (`config.ring_devices`, `config.ring_seq_lens`): for each device count N the
benchmark re-runs itself in a subprocess with N fake CPU devices (`--ring_worker=N`) and
times causal forward+backward of `ring` on a sequence=N mesh against single-device `flash`,
with the compiled program's memory per device (arguments, outputs and temporaries: the ring's
inputs and gradients are split over the devices, flash's are whole). Fake devices share this
machine's cores, so the time ratio shows the ring's overhead, not a speed-up; the memory
column is the point.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import sys

from experiments.benchmarks import harness

for _arg in sys.argv:  # a ring worker's fake devices must exist before jax is imported
  if _arg.startswith("--ring_worker=") and int(_arg.split("=", 1)[1]) > 0:
    harness.fake_cpu_devices(int(_arg.split("=", 1)[1]))

from absl import app, flags
from ml_collections import config_flags
import numpy as np
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from attention_jax import kernels
from attention_jax.training import parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/benchmark_attention.py", "Benchmark configuration.", lock_config=True)
_RING_WORKER = flags.DEFINE_integer("ring_worker", 0, "Internal: measure ring attention on "
                                    "this many fake devices and print JSON rows.")

GEMM_SIZE = 2048


def attention_fn(impl: str, causal: bool):
  """`xla` is jax.nn.dot_product_attention itself (the baseline); other names are kernels."""
  if impl == "xla":
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                        implementation="xla")
  kernel = kernels.get(impl)  # unknown names fail here, listing the valid ones
  return lambda q, k, v: kernel(q, k, v, causal=causal)


def jax_step(impl: str, pass_: str, causal: bool):
  """Jitted f(q, k, v, d_out): the forward, or the gradients of sum(out * d_out)."""
  attn = attention_fn(impl, causal)
  if pass_ == "forward":
    return jax.jit(lambda q, k, v, g: attn(q, k, v))
  return jax.jit(jax.grad(lambda q, k, v, g: jnp.sum(attn(q, k, v) * g), argnums=(0, 1, 2)))


def torch_step(pass_: str, causal: bool, arrays):
  """A callable running torch SDPA on copies of `arrays` ([B, H, T, D] layout)."""
  import torch  # optional dependency
  sdpa = torch.nn.functional.scaled_dot_product_attention
  q, k, v, g = (torch.from_numpy(np.asarray(a).transpose(0, 2, 1, 3).copy()) for a in arrays)
  if pass_ == "forward":
    def run():
      with torch.no_grad():
        sdpa(q, k, v, is_causal=causal)
  else:
    def run():
      qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
      sdpa(qq, kk, vv, is_causal=causal).backward(g)
  return run


def temp_bytes(step, shapes) -> int:
  """XLA's temporary memory for one call, from the compiled executable (nothing allocated)."""
  return step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def flops(batch, heads, seq_len, head_dim, pass_, causal) -> float:
  """FlashAttention's convention: forward 4·B·H·T²·D (halved if causal); backward 2.5x that."""
  forward = 4.0 * batch * heads * seq_len ** 2 * head_dim * (0.5 if causal else 1.0)
  return forward * (3.5 if pass_ == "forward_backward" else 1.0)


def gemm_rate() -> float:
  """Same-process float32 GEMM rate (FLOP/s) on a 2048x2048 matmul, median of 7."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((GEMM_SIZE,) * 2), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(a))
  times = harness.interleaved({"gemm": lambda: harness.timed(
      lambda: jax.block_until_ready(matmul(a)))}, 7, warmup=0)["gemm"]
  return 2.0 * GEMM_SIZE ** 3 / harness.median(times)


def random_inputs(batch, seq_len, heads, head_dim, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal((batch, seq_len, heads, head_dim)), dtype)
          for _ in range(4)]


def measure(config, seq_len: int, heads: int, impls, passes, causals, gemm: float, log):
  """Interleaved timings of every (impl, pass, causal) at one length; returns result rows."""
  dtype = jnp.dtype(config.dtype)
  arrays = random_inputs(config.batch, seq_len, heads, config.head_dim, dtype)
  shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
  rows, runners = [], []
  for impl in impls:
    for pass_ in passes:
      for causal in causals:
        row = dict(seq_len=seq_len, heads=heads, impl=impl, pass_=pass_, causal=causal,
                   temp_mb=None, median_s=None, skipped=None)
        if impl == "torch":
          try:
            run = torch_step(pass_, causal, arrays)
          except ImportError:
            continue
        else:
          step = jax_step(impl, pass_, causal)
          row["temp_mb"] = temp_bytes(step, shapes) / 2 ** 20
          if row["temp_mb"] > config.memory_limit_gb * 1024:
            row["skipped"] = f"needs {row['temp_mb'] / 1024:.1f} GB temp"
            rows.append(row)
            continue
          run = lambda step=step: jax.block_until_ready(step(*arrays))
        rows.append(row)
        runners.append((row, run))
  repeats = config.repeats if seq_len <= 4096 else config.repeats_above_4096
  times = harness.interleaved(  # the warm-up (compilation, first run) is excluded
      {id(row): lambda run=run: harness.timed(run) for row, run in runners}, repeats,
      after_round=lambda r: log(f"  T={seq_len} H={heads}: round {r + 1}/{repeats} done"))
  for row, _ in runners:
    row["median_s"] = harness.median(times[id(row)])
    work = flops(config.batch, heads, seq_len, config.head_dim, row["pass_"], row["causal"])
    row["gflops"] = work / row["median_s"] / 1e9
    row["gemm_fraction"] = work / row["median_s"] / gemm
  return rows


def reference_attention(q64, k64, v64, causal, logits_soft_cap=None, sinks=None):
  """Float64 numpy attention of one example, [heads, T, d], with a kernel spec's soft cap
  and learned sinks (a scalar for every head) where it sets them."""
  t, d = q64.shape[1], q64.shape[2]
  scores = q64 @ k64.transpose(0, 2, 1) / np.sqrt(d)
  if logits_soft_cap is not None:
    scores = logits_soft_cap * np.tanh(scores / logits_soft_cap)
  if causal:
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
  top = scores.max(-1, keepdims=True) if sinks is None else np.maximum(
      scores.max(-1, keepdims=True), sinks)
  weights = np.exp(scores - top)
  denominator = weights.sum(-1, keepdims=True) + (0.0 if sinks is None else np.exp(sinks - top))
  return (weights / denominator) @ v64


def max_abs_errors(config) -> dict[str, float]:
  """Max |kernel - float64 numpy reference| of the forward at `config.error_len`, inputs in
  `config.dtype` (the reference takes a spec's `logits_soft_cap` and scalar `sinks`)."""
  t, h, d = config.error_len, config.heads, config.head_dim
  q, k, v, _ = random_inputs(1, t, h, d, jnp.dtype(config.dtype), seed=1)
  q64, k64, v64 = (np.asarray(x.astype(jnp.float32), np.float64)[0].transpose(1, 0, 2)
                   for x in (q, k, v))
  errors = {}
  for causal in (False, True):
    for impl in [i for i in config.implementations if i != "torch"]:
      options = {} if impl == "xla" else getattr(kernels.get(impl).fn, "keywords", {})
      want = reference_attention(q64, k64, v64, causal, options.get("logits_soft_cap"),
                                 options.get("sinks"))
      got = jax.jit(attention_fn(impl, causal))(q, k, v)
      got = np.asarray(got, np.float64)[0].transpose(1, 0, 2)
      errors[f"{impl}{'_causal' if causal else ''}"] = float(np.abs(got - want).max())
  return errors


def find(rows, **match):
  for row in rows:
    if all(row[k] == v for k, v in match.items()) and row["median_s"]:
      return row
  return None


def ratios(rows, seq_len: int) -> dict[str, float]:
  """The ratios the targets are stated in, at one length (None where not measured)."""
  def ratio(a, b):
    return None if a is None or b is None else b["median_s"] / a["median_s"]

  out = {}
  for pass_ in ("forward", "forward_backward"):
    flash = find(rows, seq_len=seq_len, impl="flash", pass_=pass_, causal=False)
    flash_c = find(rows, seq_len=seq_len, impl="flash", pass_=pass_, causal=True)
    for other in ("xla", "dot_product", "torch"):
      for causal, mine in ((False, flash), (True, flash_c)):
        theirs = find(rows, seq_len=seq_len, impl=other, pass_=pass_, causal=causal)
        out[f"flash_vs_{other}_{pass_}{'_causal' if causal else ''}"] = ratio(mine, theirs)
    out[f"flash_causal_speedup_{pass_}"] = ratio(flash_c, flash)
  return out


def add_baseline_ratios(rows, baseline: str):
  """Sets row["of_baseline"]: the baseline's time over the row's, for the same call."""
  for row in rows:
    base = find(rows, seq_len=row["seq_len"], heads=row["heads"], impl=baseline,
                pass_=row["pass_"], causal=row["causal"])
    row["of_baseline"] = (base["median_s"] / row["median_s"]
                          if base is not None and row["median_s"] else None)


def format_table(rows, baseline: str = "") -> str:
  extra = f" of {baseline} |" if baseline else ""
  lines = ["| T | heads | impl | pass | causal | time | GFLOP/s | of GEMM | XLA temp |" + extra,
           "|---|---|---|---|---|---|---|---|---|" + ("---|" if baseline else "")]
  for r in rows:
    temp = "—" if r["temp_mb"] is None else f"{r['temp_mb']:.0f} MB"
    if r["median_s"] is None:
      timing = f"skipped ({r['skipped']})", "", ""
    else:
      timing = (f"{r['median_s'] * 1e3:.1f} ms", f"{r['gflops']:,.0f}",
                f"{r['gemm_fraction']:.0%}")
    ratio = r.get("of_baseline")
    tail = (f" {ratio:.2f}x |" if ratio else " — |") if baseline else ""
    lines.append(f"| {r['seq_len']} | {r['heads']} | {r['impl']} | {r['pass_']} | "
                 f"{'yes' if r['causal'] else 'no'} | " + " | ".join(timing) + f" | {temp} |"
                 + tail)
  return "\n".join(lines)


def plot(rows, path: str) -> bool:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for ax, pass_ in zip(axes, ("forward", "forward_backward")):
    for impl in sorted({r["impl"] for r in rows}):
      for causal, style in ((False, "-"), (True, "--")):
        pts = [(r["seq_len"], r["median_s"]) for r in rows if r["impl"] == impl
               and r["pass_"] == pass_ and r["causal"] == causal and r["median_s"]
               and r["heads"] == rows[0]["heads"]]
        if pts:
          ax.loglog(*zip(*pts), style, marker="o", label=f"{impl}{' causal' if causal else ''}")
    ax.set(title=pass_.replace("_", "+"), xlabel="sequence length T", ylabel="median time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return True


def measure_ring_here(config, devices: int) -> list[dict]:
  """Ring on a sequence=`devices` mesh vs single-device flash: causal forward+backward at
  each of config.ring_seq_lens (this process has the fake devices)."""
  mesh = jax.make_mesh((devices,), ("sequence",), axis_types=(AxisType.Auto,))
  rows = []
  for seq_len in config.ring_seq_lens:
    arrays = random_inputs(1, seq_len, config.ring_heads, config.head_dim,
                           jnp.dtype(config.dtype))
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]
    runs, timed_here = [], seq_len <= config.ring_time_max_len
    # The ring's inputs and gradients live split over the sequence axis, as in training.
    split = NamedSharding(mesh, P(None, "sequence"))
    ring_arrays = [jax.device_put(a, split) for a in arrays]
    ring_shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=split) for a in arrays]
    for impl in ("ring", "flash"):
      step = jax_step(impl, "forward_backward", True)
      if impl == "ring":
        step = jax.jit(step, in_shardings=(split,) * 4, out_shardings=(split,) * 3)
      with jax.set_mesh(mesh) if impl == "ring" else contextlib.nullcontext():
        compiled = step.lower(*(ring_shapes if impl == "ring" else shapes)).compile()
        memory = parallel.memory_analysis(compiled)["total"] / 2 ** 20
      row = dict(devices=devices, seq_len=seq_len, impl=impl, memory_mb=memory)
      runs.append((row, step))

    def run(row, step):
      inputs = ring_arrays if row["impl"] == "ring" else arrays
      with jax.set_mesh(mesh) if row["impl"] == "ring" else contextlib.nullcontext():
        return harness.timed(lambda: jax.block_until_ready(step(*inputs)))

    times = harness.interleaved({row["impl"]: functools.partial(run, row, step)
                                 for row, step in runs}, config.ring_repeats) if timed_here else {}
    for row, _ in runs:
      row["median_s"] = harness.median(times[row["impl"]]) if timed_here else None
      rows.append(row)
  return rows


def measure_ring(config, log) -> list[dict]:
  """Runs measure_ring_here in a subprocess per device count; returns all rows."""
  rows = []
  argv = ["--config=configs/benchmark_attention.py:ring",
          f"--config.ring_seq_lens={tuple(config.ring_seq_lens)}",
          *(f"--config.{name}={config[name]}" for name in
            ("ring_heads", "ring_repeats", "ring_time_max_len", "head_dim", "dtype"))]
  for devices in config.ring_devices:
    log(f"  ring attention on {devices} fake devices (a subprocess)...")
    done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.attention", *argv,
                           f"--ring_worker={devices}"], capture_output=True, text=True,
                          check=False, cwd=harness.REPO)
    if done.returncode != 0:
      raise RuntimeError(f"the ring worker on {devices} devices failed:\n{done.stderr[-3000:]}")
    rows += json.loads(done.stdout.strip().splitlines()[-1])
  for row in rows:
    flash = next(r for r in rows if r["impl"] == "flash" and r["seq_len"] == row["seq_len"]
                 and r["devices"] == row["devices"])
    row["of_flash"] = (flash["median_s"] / row["median_s"] if row["median_s"] else None)
    row["memory_of_flash"] = row["memory_mb"] / flash["memory_mb"]
  return rows


def format_ring_table(rows) -> str:
  lines = ["| devices | T | impl | time (fwd+bwd, causal) | speed of flash's | "
           "memory per device | of flash's |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    timing = (f"{r['median_s'] * 1e3:,.0f} ms | {r['of_flash']:.2f}x" if r["median_s"]
              else "not timed | —")
    lines.append(f"| {r['devices']} | {r['seq_len']} | {r['impl']} | {timing} | "
                 f"{r['memory_mb']:,.1f} MB | {r['memory_of_flash']:.2f} |")
  return "\n".join(lines)


def run(config, log=print) -> dict:
  """Runs the benchmark described by `config`; returns (and writes) the results."""
  os.makedirs(config.output_dir, exist_ok=True)
  log(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()[0].device_kind} "
      f"({platform.processor() or 'cpu'}, {os.cpu_count()} cores)")
  gemm = gemm_rate()
  log(f"same-process float32 GEMM ({GEMM_SIZE}^3): {gemm / 1e9:.0f} GFLOP/s")
  rows = []
  json_path = os.path.join(config.output_dir, "benchmark_attention.json")
  for seq_len in config.seq_lens:
    rows += measure(config, seq_len, config.heads, config.implementations, config.passes,
                    config.causal, gemm, log)
    if config.baseline:
      add_baseline_ratios(rows, config.baseline)
    with open(json_path, "w") as f:  # the lengths so far, should a time limit stop the run
      json.dump(dict(config=config.to_dict(), jax_version=jax.__version__,
                     device=jax.devices()[0].device_kind, gemm_gflops=gemm / 1e9, rows=rows,
                     partial=True), f, indent=1)
  for seq_len in config.long_seq_lens:
    rows += measure(config, seq_len, config.long_heads, ("flash",), ("forward_backward",),
                    (False,), gemm, log)
    dpa = jax_step("xla", "forward_backward", False)
    shapes = [jax.ShapeDtypeStruct((config.batch, seq_len, config.long_heads,
                                    config.head_dim), jnp.dtype(config.dtype))] * 4
    rows.append(dict(seq_len=seq_len, heads=config.long_heads, impl="xla",
                     pass_="forward_backward", causal=False, median_s=None,
                     temp_mb=temp_bytes(dpa, shapes) / 2 ** 20, skipped="memory only"))
  if config.baseline:
    add_baseline_ratios(rows, config.baseline)
  ring_rows = measure_ring(config, log) if config.ring_devices else []
  results = dict(config=config.to_dict(), jax_version=jax.__version__,
                 device=jax.devices()[0].device_kind,
                 gemm_gflops=gemm / 1e9, rows=rows, max_abs_error=max_abs_errors(config),
                 ratios={t: ratios(rows, t) for t in config.seq_lens}, ring=ring_rows)
  table = format_table(rows, config.baseline)
  if ring_rows:
    table += "\n\nRing attention (causal, striped):\n\n" + format_ring_table(ring_rows)
  log("\n" + table)
  for seq_len, rs in results["ratios"].items():
    shown = ", ".join(f"{k}={v:.2f}" for k, v in rs.items() if v is not None)
    log(f"\nratios at T={seq_len}: {shown}")
  log(f"\nmax abs error vs float64 numpy at T={config.error_len}: "
      + ", ".join(f"{k}={v:.1e}" for k, v in results["max_abs_error"].items()))
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(config.output_dir, "benchmark_attention.md"), "w") as f:
    f.write(table + "\n")
  if config.results_dir:
    log("wrote " + harness.write_result(
        config.results_dir, "attention-kernels-" + jax.default_backend(),
        f"Attention kernels on {jax.devices()[0].device_kind}", table))
  png = os.path.join(config.output_dir, "benchmark_attention.png")
  log(f"\nwrote {config.output_dir}/benchmark_attention.{{json,md}}"
      + (f" and {png}" if plot(rows, png) else " (install matplotlib for the plot)"))
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _RING_WORKER.value:
    print(json.dumps(measure_ring_here(_CONFIG.value, _RING_WORKER.value)))
    return
  run(_CONFIG.value)


if __name__ == "__main__":
  app.run(main)
