r"""Benchmark one training step of the quickstart GPT: our JAX trainer step vs PyTorch.

    python -m experiments.benchmarks.train_step                       # 3 rounds of 50 steps
    python -m experiments.benchmarks.train_step --steps=200 --rounds=7 --json_out=/tmp/step.json
    python -m experiments.benchmarks.train_step --tiny --steps=2 --rounds=1   # smoke run

The model is configs/default.py (byte-level GPT, width 192, depth 4, 4 heads, MLP 768, seq_len
128, batch 32, no dropout). `jax` is the trainer's own compiled step (`training.setup`: its
TrainState, optimizer, mesh runner and donated state); `jax_default_malloc` is the same with glibc's malloc as it comes
(ATTENTION_JAX_MALLOC=default: without attention_jax.allocator's tuning, the before/after of
that change); `jax_plain` is the same GPT written as a few plain jax.numpy functions (one fused
query/key/value matrix, attention as two einsums, optax AdamW and clipping, no Flax), which
separates what our layers and trainer cost from what XLA:CPU makes of the model itself;
`torch_eager` and `torch_compile` are an equivalent plain torch.nn GPT (pre-LN, learned
positions, tied embeddings, tanh GELU, SDPA causal attention) with AdamW (decay on matrices
only) and global-norm clipping. Needs `pip install torch==2.13.0` for the PyTorch rows.

Per ../shared/PERF.md, every measurement is a fresh subprocess (allocator settings are
process-wide, so neither framework's tuning touches the other), started in interleaved rounds
(A B C A B C ...). A worker warms up (compilation excluded), times `--steps` steps with one
blocking sync at the end, and reports steps/s plus user and system CPU seconds and minor page
faults per step (getrusage around the timed steps). The parent prints the median over rounds of
tokens/s per implementation and JAX / best PyTorch, as a markdown table; `--json_out` writes all
of it. It never asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys

from absl import app, flags

from experiments.benchmarks import harness, plain_gpt, torch_gpt

# The environment before anything (attention_jax's import-time allocator tuning included) can
# change it: every worker starts from it, and sets up its own framework.
_CLEAN_ENV = dict(os.environ)

# jax_default_malloc: our step with glibc malloc as it comes (ATTENTION_JAX_MALLOC=default),
# i.e. without attention_jax.allocator's tuning: the before/after of that change, side by side.
IMPLS = ("jax", "jax_default_malloc", "jax_plain", "torch_eager", "torch_compile")
MALLOC_OPT_OUT = {"jax_default_malloc": "default"}
TORCH_INSTALL = "pip install torch==2.13.0"
RESULT_PREFIX = "BENCHMARK_RESULT "
REPORTED_ENV = ("MALLOC_", "LD_PRELOAD", "GLIBC_TUNABLES", "XLA_FLAGS", "OMP_", "MKL_")

_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps per worker (per round).")
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed steps first (compilation included); "
                               "torch_compile takes at least 3.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; the table shows medians.")
_IMPLS = flags.DEFINE_list("impls", list(IMPLS), f"Implementations, from {', '.join(IMPLS)}.")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Write the results here as JSON.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "", "File the table here (docs/results) with "
                                   "its date, machine and commit.")
_TINY = flags.DEFINE_boolean("tiny", False, "A tiny model and batch (smoke runs, tests).")
_WORKER = flags.DEFINE_enum("worker", None, IMPLS, "Internal: run one worker and print its "
                            "result (the parent passes --spec).")
_SPEC = flags.DEFINE_string("spec", None, "Internal: the worker's JSON spec.")


def load_config(tiny: bool = False):
  """The quickstart config (configs/default.py); `tiny` shrinks model and batch."""
  from configs import default
  config = default.get_config()
  if tiny:
    config.dataset.seq_len, config.batch_size = 32, 4
    config.model.width, config.model.depth, config.model.num_heads = 32, 2, 4
    config.model.mlp_dim = 64
  return config


def make_spec(config, steps: int, warmup: int) -> dict:
  """What a worker needs: the JAX config, and the same shape and optimizer as plain numbers
  (a PyTorch worker must not import attention_jax), with the trainer's learning rate at every
  step the twins take (`lr_values`, from `optim.learning_rate_schedule`: no second copy)."""
  from attention_jax.data import tokenizers
  from attention_jax.training import optim
  if (config.task != "lm" or config.model.get("position", "learned") != "learned"
      or config.model.get("dropout_rate", 0.0) or config.precision != "float32"):
    raise ValueError("the PyTorch twin is a float32 GPT with learned positions and no dropout "
                     "(task 'lm').")
  m, o = config.model, config.optimizer
  schedule = optim.learning_rate_schedule(o, config.num_train_steps)
  return dict(
      config=config.to_dict(), steps=steps, warmup=warmup, seed=config.seed,
      shape=dict(vocab_size=tokenizers.ByteTokenizer.vocab_size, seq_len=config.dataset.seq_len,
                 batch=config.batch_size, width=m.width, depth=m.depth, heads=m.num_heads,
                 mlp_dim=m.mlp_dim, ln_eps=m.get("ln_eps", 1e-5)),
      optimizer=dict(lr=o.lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                     clip_norm=o.clip_norm,
                     lr_values=[float(schedule(i)) for i in range(max(warmup, 3) + steps + 1)]))


def random_batch(shape: dict, seed: int):
  """int32 byte tokens [batch, seq_len + 1] (the LM task's inputs and shifted targets)."""
  import numpy as np
  return np.random.default_rng(seed).integers(
      0, shape["vocab_size"], (shape["batch"], shape["seq_len"] + 1), dtype=np.int32)


def time_steps(step, steps: int, warmup: int, sync) -> dict:
  """Runs `step()` warmup + steps times; times the last `steps` (one `sync()` at the end)."""
  def run(count):
    for _ in range(count):
      step()
    sync()

  warmup_s = harness.timed(lambda: run(warmup))
  before = resource.getrusage(resource.RUSAGE_SELF)
  elapsed = harness.timed(lambda: run(steps))
  after = resource.getrusage(resource.RUSAGE_SELF)
  return dict(warmup_s=warmup_s, time_s=elapsed, steps_per_s=steps / elapsed,
              user_s_per_step=(after.ru_utime - before.ru_utime) / steps,
              sys_s_per_step=(after.ru_stime - before.ru_stime) / steps,
              minflt_per_step=(after.ru_minflt - before.ru_minflt) / steps,
              peak_rss_mb=after.ru_maxrss / 1024)


# --- JAX: the trainer's step ----------------------------------------------------------------


def jax_worker(spec: dict) -> dict:
  """Times the trainer's own compiled step (`training.setup`: its optimizer, state layout
  and mesh runner, donated state) on one random batch."""
  import jax
  import ml_collections
  from attention_jax.training.setup import setup

  config = ml_collections.ConfigDict(spec["config"])
  config.num_devices = 1  # one device's step, as the PyTorch twin's
  built = setup(config)
  state = built.runner.init()
  param_count = sum(x.size for x in jax.tree.leaves((state.params, state.frozen)))
  step_rng, train_step = built.step_rng, built.train_step
  batch = built.runner.shard_batch(random_batch(spec["shape"], spec["seed"]))
  out = {}

  def step():
    out["state"], out["metrics"] = train_step(out.get("state", state), batch, step_rng)

  timing = time_steps(step, spec["steps"], spec["warmup"],
                      lambda: jax.block_until_ready(out["state"]))
  from attention_jax import allocator
  return dict(timing, param_count=param_count, loss=float(out["metrics"]["train/loss"]),
              version=f"jax {jax.__version__}", threads=None, kernel=config.model.kernel,
              malloc=allocator.describe())


# --- JAX without our layers: the same GPT as plain functions ---------------------------------


def jax_plain_worker(spec: dict) -> dict:
  """Times the plain-function GPT's step: jit, donated state, the same AdamW and clipping."""
  import attention_jax  # noqa: F401  (as in the trainer: importing it tunes malloc first)
  import jax
  import jax.numpy as jnp
  import optax

  shape, opt = spec["shape"], spec["optimizer"]
  init, forward = plain_gpt.plain_gpt(shape)
  params = init(jax.random.key(spec["seed"]))
  param_count = sum(x.size for x in jax.tree.leaves(params))
  lr_values = jnp.asarray(opt["lr_values"], jnp.float32)
  schedule = lambda count: lr_values[jnp.minimum(count, len(lr_values) - 1)]
  optimizer = optax.chain(
      *([optax.clip_by_global_norm(opt["clip_norm"])] if opt["clip_norm"] else []),
      optax.adamw(schedule, b1=opt["b1"], b2=opt["b2"], eps=opt["eps"],
                  weight_decay=opt["weight_decay"],
                  mask=lambda tree: jax.tree.map(lambda p: p.ndim >= 2, tree)))

  def loss_fn(params, batch):
    logits = forward(params, batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

  def train_step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  train_step = jax.jit(train_step, donate_argnums=(0,))
  batch = jnp.asarray(random_batch(shape, spec["seed"]))
  out = {"state": (params, optimizer.init(params))}

  def step():
    out["state"], out["loss"] = train_step(out["state"], batch)

  timing = time_steps(step, spec["steps"], spec["warmup"],
                      lambda: jax.block_until_ready(out["state"]))
  return dict(timing, param_count=param_count, loss=float(out["loss"]),
              version=f"jax {jax.__version__}", threads=None, kernel="einsum")


# --- PyTorch: the same GPT in plain torch.nn -----------------------------------------------


def lr_factor(opt: dict):
  """step -> the trainer's learning rate at that step as a multiple of lr (LambdaLR's form),
  read from the spec's `lr_values`."""
  values = opt["lr_values"]
  return lambda step: values[min(step, len(values) - 1)] / opt["lr"]


def torch_worker(spec: dict, compile_model: bool) -> dict:
  """Times forward, backward, clipping and AdamW of the torch twin (eager or torch.compile)."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"the PyTorch rows need torch: {TORCH_INSTALL}") from e
  from torch.nn import functional as F

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(spec["seed"])
  shape, opt = spec["shape"], spec["optimizer"]
  model = torch_gpt.torch_gpt(shape)
  params = list(model.parameters())
  optimizer = torch.optim.AdamW(
      [{"params": [p for p in params if p.ndim >= 2], "weight_decay": opt["weight_decay"]},
       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
      lr=opt["lr"], betas=(opt["b1"], opt["b2"]), eps=opt["eps"])
  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(opt))
  forward = torch.compile(model) if compile_model else model
  batch = torch.from_numpy(random_batch(shape, spec["seed"])).long()
  inputs, targets = batch[:, :-1], batch[:, 1:]
  out = {}

  def step():
    logits = forward(inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if opt["clip_norm"]:
      torch.nn.utils.clip_grad_norm_(params, opt["clip_norm"])
    optimizer.step()
    schedule.step()
    out["loss"] = loss.detach()

  warmup = max(spec["warmup"], 3) if compile_model else spec["warmup"]
  timing = time_steps(step, spec["steps"], warmup, lambda: None)  # CPU: synchronous
  return dict(timing, param_count=sum(p.numel() for p in params),
              loss=float(out["loss"]), version=f"torch {torch.__version__}",
              threads=torch.get_num_threads(), kernel="sdpa")


def run_worker(impl: str, spec: dict) -> dict:
  """One implementation's measurement in this process: timings, parameter count, last loss."""
  if impl in ("jax", "jax_default_malloc"):
    result = jax_worker(spec)
  elif impl == "jax_plain":
    result = jax_plain_worker(spec)
  elif impl in ("torch_eager", "torch_compile"):
    result = torch_worker(spec, compile_model=impl == "torch_compile")
  else:
    raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLS)}.")
  s = spec["shape"]
  result.update(impl=impl, tokens_per_s=result["steps_per_s"] * s["batch"] * s["seq_len"],
                env={k: v for k, v in os.environ.items() if k.startswith(REPORTED_ENV)})
  return result


def first_line(text: str) -> str:
  lines = [line for line in str(text).strip().splitlines() if line.strip()]
  return lines[0] if lines else "(no message)"


def worker_main(impl: str, spec_json: str):
  """The subprocess side: prints one RESULT line (with "error" if the run failed)."""
  try:
    result = run_worker(impl, json.loads(spec_json))
  except Exception as e:  # reported, not raised: the parent carries on with the others
    result = dict(impl=impl, error=f"{type(e).__name__}: {first_line(e)}")
  print(RESULT_PREFIX + json.dumps(result), flush=True)


# --- The parent: interleaved subprocesses, medians, table -----------------------------------


def spawn(impl: str, spec: dict) -> dict:
  """Runs one worker in a fresh process with the clean environment; returns its result."""
  cmd = [sys.executable, "-m", "experiments.benchmarks.train_step", f"--worker={impl}",
         f"--spec={json.dumps(spec)}"]
  env = dict(_CLEAN_ENV)
  if impl in MALLOC_OPT_OUT:
    env["ATTENTION_JAX_MALLOC"] = MALLOC_OPT_OUT[impl]
  proc = subprocess.run(cmd, env=env, cwd=harness.REPO, capture_output=True, text=True)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  tail = [line for line in proc.stderr.splitlines() if line.strip()]
  return dict(impl=impl, error=f"worker exited with {proc.returncode}: "
              + (tail[-1] if tail else "no output"))


def summarize(results: list[dict], impls) -> dict:
  """Medians over rounds per implementation (or its error), and JAX / best PyTorch."""
  keys = ("tokens_per_s", "steps_per_s", "user_s_per_step", "sys_s_per_step",
          "minflt_per_step", "peak_rss_mb", "warmup_s", "loss")
  summary = {}
  for impl in impls:
    ok = [r for r in results if r["impl"] == impl and "error" not in r]
    if not ok:
      errors = [r["error"] for r in results if r["impl"] == impl]
      summary[impl] = dict(error=errors[0] if errors else "not run")
      continue
    summary[impl] = {k: statistics.median(r[k] for r in ok) for k in keys}
    summary[impl].update(rounds=len(ok), param_count=ok[0]["param_count"],
                         version=ok[0]["version"], threads=ok[0]["threads"])
  torch_rates = {i: s["tokens_per_s"] for i, s in summary.items()
                 if i.startswith("torch") and "error" not in s}
  ratio = best = None
  if torch_rates and "error" not in summary.get("jax", {"error": ""}):
    best = max(torch_rates, key=torch_rates.get)
    ratio = summary["jax"]["tokens_per_s"] / torch_rates[best]
  return dict(impls=summary, jax_over_best_torch=ratio, best_torch=best)


def check_param_counts(summary: dict):
  counts = {i: s["param_count"] for i, s in summary["impls"].items() if "param_count" in s}
  if len(set(counts.values())) > 1:
    raise AssertionError("the models differ in size: " + ", ".join(
        f"{i} {n:,} parameters" for i, n in counts.items()))


def format_table(summary: dict) -> str:
  lines = ["| impl | tokens/s | ms/step | user s/step | sys s/step | minor faults/step | "
           "peak RSS | params |", "|---|---|---|---|---|---|---|---|"]
  for impl, s in summary["impls"].items():
    if "error" in s:
      lines.append(f"| {impl} | failed: {s['error']} | | | | | | |")
      continue
    lines.append(f"| {impl} | {s['tokens_per_s']:,.0f} | {1e3 / s['steps_per_s']:.1f} | "
                 f"{s['user_s_per_step']:.3f} | {s['sys_s_per_step']:.3f} | "
                 f"{s['minflt_per_step']:,.0f} | {s['peak_rss_mb']:,.0f} MB | "
                 f"{s['param_count']:,} |")
  tuned, untuned = (summary["impls"].get(i, {}) for i in ("jax", "jax_default_malloc"))
  if "tokens_per_s" in tuned and "tokens_per_s" in untuned:
    gain = tuned["tokens_per_s"] / untuned["tokens_per_s"]
    lines.append(f"\njax / jax_default_malloc: {gain:.2f}x tokens/s")
  if summary["jax_over_best_torch"] is not None:
    lines.append(f"\nJAX / best PyTorch ({summary['best_torch']}): "
                 f"{summary['jax_over_best_torch']:.2f}x tokens/s")
  return "\n".join(lines)


def run(spec: dict, impls, rounds: int, log=print) -> dict:
  """Interleaved rounds of one subprocess per implementation; returns summary and raw rows."""
  unknown = [i for i in impls if i not in IMPLS]
  if unknown:
    raise ValueError(f"unknown implementations {unknown}; valid: {', '.join(IMPLS)}.")
  if any(i.startswith("torch") for i in impls):
    import importlib.util
    if importlib.util.find_spec("torch") is None:
      raise RuntimeError(f"PyTorch is not installed: {TORCH_INSTALL} (or --impls=jax).")
  s = spec["shape"]
  log(f"GPT width {s['width']}, depth {s['depth']}, {s['heads']} heads, MLP {s['mlp_dim']}, "
      f"seq_len {s['seq_len']}, batch {s['batch']}; {spec['steps']} timed steps after "
      f"{spec['warmup']} warm-up, {rounds} rounds; {os.cpu_count()} cores, "
      f"{platform.processor() or platform.machine()}")
  results, failed, round_ = [], set(), [0]

  def measure(impl):  # one subprocess; an implementation that failed once is not rerun
    if impl in failed:
      return None
    result = dict(spawn(impl, spec), round=round_[0])
    results.append(result)
    r = f"  round {round_[0] + 1}/{rounds} {impl}"
    if "error" in result:
      failed.add(impl)
      log(f"{r}: failed: {result['error']}")
    else:
      log(f"{r}: {result['tokens_per_s']:,.0f} tokens/s ({1e3 / result['steps_per_s']:.1f} "
          f"ms/step, sys {result['sys_s_per_step'] * 1e3:.1f} ms/step), loss "
          f"{result['loss']:.3f}")
    return result

  harness.interleaved({impl: lambda impl=impl: measure(impl) for impl in impls}, rounds,
                      warmup=0,  # each worker warms up itself
                      after_round=lambda r: round_.__setitem__(0, r + 1))
  summary = summarize(results, impls)
  for impl, si in summary["impls"].items():
    if "param_count" in si:
      log(f"{impl}: {si['param_count']:,} parameters ({si['version']})")
  check_param_counts(summary)
  log("\n" + format_table(summary))
  return dict(spec=spec, rounds=results, summary=summary)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKER.value:
    worker_main(_WORKER.value, _SPEC.value)
    return
  spec = make_spec(load_config(_TINY.value), _STEPS.value, _WARMUP.value)
  try:
    results = run(spec, _IMPLS.value, _ROUNDS.value)
  except (RuntimeError, ValueError) as e:
    raise app.UsageError(str(e)) from e
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump(results, f, indent=1)
    print(f"\nwrote {_JSON_OUT.value}")
  if _RESULTS_DIR.value:
    print("wrote " + harness.write_result(_RESULTS_DIR.value, "train-step",
                                          "The training step against PyTorch",
                                          format_table(results["summary"])))


if __name__ == "__main__":
  app.run(main)
