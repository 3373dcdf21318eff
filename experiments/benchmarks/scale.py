r"""What the scale features buy, measured side by side in one process (no timed tests).

    python -m experiments.benchmarks.scale --what=compile,sync
    python -m experiments.benchmarks.scale --what=remat --topology=v5p:2x2x2   # needs libtpu

- compile: the compile time of the training step of a 24-layer GPT (configs/gpt_kjv.py with
  depth 24), blocks unrolled vs under `scan_layers`, alternated `--rounds` times.
- sync: the trainer's steps/s with the metrics fetched to the host after every step (as the
  loop did before) vs only at log steps (now), on the quickstart config; the same compiled
  step and state, the two loops interleaved in rounds of `--steps` steps.
- remat: per-device temporary memory of GPT-2 medium's shape at 2k context
  (configs/gpt_kjv.py:gpt2_medium, fsdp over the topology's chips) for each `model.remat`,
  from the compiler (experiments.plan's numbers; XLA:CPU's do not model remat, so name a TPU
  topology).
"""

from __future__ import annotations

import functools

import jax
from absl import app, flags, logging

from attention_jax.data import pipeline
from attention_jax.training import plan, train
from attention_jax.training.setup import setup
from configs import gpt_kjv
from experiments.benchmarks import harness

_WHAT = flags.DEFINE_list("what", ["compile", "sync"], "Which measurements: compile, sync, "
                          "remat.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds per measurement.")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps per round (sync).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice for the remat measurement.")


def compile_seconds(scan_layers: bool) -> float:
  config = gpt_kjv.get_config("small")
  config.num_devices = 1
  config.model.depth = 24
  config.model.scan_layers = scan_layers
  return setup(config).compile_seconds


def measure_compile(rounds: int):
  times = harness.interleaved({scan: functools.partial(compile_seconds, scan)
                               for scan in (False, True)}, rounds, warmup=0)
  unrolled, scanned = harness.median(times[False]), harness.median(times[True])
  print(f"compile, 24-layer GPT (quickstart width): unrolled {unrolled:.1f} s, scan_layers "
        f"{scanned:.1f} s -> {unrolled / scanned:.1f}x faster (medians of {rounds})")


def measure_sync(rounds: int, steps: int):
  config = gpt_kjv.get_config("small")
  config.num_devices = 1
  built = setup(config)
  runner, step = built.runner, built.train_step
  state = runner.init()
  batches = train.DevicePrefetch(pipeline.train_iterator(built.train_data, config.batch_size,
                                                         config.seed), runner.shard_batch)
  rng = jax.random.key(1)

  carried = {"state": state}

  def loop(fetch_every: int) -> float:
    """Steps/s of `steps` trainer steps, fetching the metrics every `fetch_every`."""
    pending = []

    def run():
      for i in range(1, steps + 1):
        carried["state"], metrics = step(carried["state"], next(batches)[0], rng)
        pending.append(metrics)
        if i % fetch_every == 0 or i == steps:
          runner.fetch(pending)
          pending.clear()

    return steps / harness.timed(run)

  rates = harness.interleaved({"every step": lambda: loop(1),
                               "log steps": lambda: loop(config.log_every_steps)}, rounds)
  before, after = harness.median(rates["every step"]), harness.median(rates["log steps"])
  print(f"trainer steps/s on {jax.devices()[0].device_kind} (quickstart, {steps} steps x "
        f"{rounds} rounds, interleaved): metrics fetched every step {before:.2f}, every "
        f"{config.log_every_steps} steps {after:.2f} -> {after / before:.3f}x")


def measure_remat(topology: str | None):
  for remat in ("none", "full", "dots"):
    config = gpt_kjv.get_config("gpt2_medium")
    config.mesh.data, config.mesh.fsdp = 1, -1
    config.model.remat = remat
    result = plan.plan(config, topology)
    print(f"remat={remat}: {result['temporary_bytes'] / 2 ** 30:,.2f} GiB temporaries, "
          f"{result['total_bytes'] / 2 ** 30:,.2f} GiB in all per {result['device_kind']}, "
          f"{result['flops']:.3g} FLOPs per step")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if "compile" in _WHAT.value:
    measure_compile(_ROUNDS.value)
  if "sync" in _WHAT.value:
    measure_sync(_ROUNDS.value, _STEPS.value)
  if "remat" in _WHAT.value:
    measure_remat(_TOPOLOGY.value)


if __name__ == "__main__":
  app.run(main)
