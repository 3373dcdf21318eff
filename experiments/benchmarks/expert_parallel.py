"""Expert parallelism's two ways of moving tokens, side by side on one mesh of fake CPU
devices: `expert_collectives="explicit"` (`layers.expert_parallel`'s shard_map: all_to_all
for the capacity dispatch, all-gather + reduce-scatter for dropless) against "compiler"
(XLA's SPMD partitioner on the global program). For each dispatch: the compiled forward +
backward's temporaries per device (the activation memory), its step time, and the bytes
its collectives move.

    python -m experiments.benchmarks.expert_parallel            # expert=8, files the table
    python -m experiments.benchmarks.expert_parallel --tokens=256 --rounds=1 --out_dir=/tmp

The layer is a mixture of E experts of width F on d-wide tokens [devices, tokens / devices,
d]; the loss is a sum of sin of its outputs, differentiated in its parameters and inputs.
"""

from __future__ import annotations

import functools
import re
import sys

from absl import app, flags

from experiments.benchmarks import harness

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run)."""
  flags.DEFINE_integer("devices", 8, "Fake CPU devices, all on the expert axis.")
  flags.DEFINE_integer("experts", 16, "Number of experts (E).")
  flags.DEFINE_integer("tokens", 8192, "Tokens per step over all devices (N).")
  flags.DEFINE_integer("width", 256, "Model width (d).")
  flags.DEFINE_integer("hidden", 512, "Each expert's width (F).")
  flags.DEFINE_float("capacity_factor", 1.25, "The capacity dispatch's factor.")
  flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
  flags.DEFINE_string("out_dir", "docs/results", "Where the table is filed.")


COLLECTIVES = re.compile(r"\b(all-to-all|all-gather|reduce-scatter|all-reduce)(?:-start)?\(")


def collectives(hlo: str) -> str:
  """'all-to-all ×4, ...': the collective ops of a compiled program, counted."""
  found = {}
  for name in COLLECTIVES.findall(hlo):
    found[name] = found.get(name, 0) + 1
  return ", ".join(f"{name} ×{count}" for name, count in sorted(found.items())) or "none"


def measure(*, devices: int, experts: int, tokens: int, width: int, hidden: int,
            capacity_factor: float, rounds: int, log=print) -> dict:
  """{(dispatch, collectives): {"ms", "temporary_mib", "collectives"}}."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  from attention_jax import models  # pylint: disable=import-outside-toplevel
  from attention_jax.layers import moe  # pylint: disable=import-outside-toplevel

  mesh = jax.make_mesh((devices,), ("expert",), axis_types=(AxisType.Auto,))
  x = jax.random.normal(jax.random.key(0), (devices, tokens // devices, width))
  steps, out = {}, {}
  for dispatch in ("dropless", "capacity"):
    for how in ("explicit", "compiler"):
      config = models.create("mixtral-tiny", width=width, mlp_dim=hidden, num_experts=experts,
                             moe_dispatch=dispatch, capacity_factor=capacity_factor,
                             expert_collectives=how).config
      layer = moe.MoeMlp(config)
      params = layer.init(jax.random.key(1), x[:1])["params"]
      loss = lambda p, x, layer=layer: jnp.sum(jnp.sin(layer.apply({"params": p}, x)))
      grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
      with jax.set_mesh(mesh):
        placed_x = jax.device_put(x, NamedSharding(mesh, P("expert")))
        placed = jax.device_put(params, jax.tree.map(
            lambda a: NamedSharding(mesh, P("expert") if a.ndim == 3 else P()), params))
        compiled = grad.lower(placed, placed_x).compile()
      memory = compiled.memory_analysis()
      out[dispatch, how] = {"temporary_mib": memory.temp_size_in_bytes / 2 ** 20,
                            "collectives": collectives(compiled.as_text())}
      steps[dispatch, how] = functools.partial(
          harness.timed, lambda c=compiled, a=(placed, placed_x): jax.block_until_ready(c(*a)))
  samples = harness.interleaved(steps, rounds,
                                after_round=lambda r: log(f"round {r + 1}/{rounds}"))
  for key, times in samples.items():
    out[key]["ms"] = 1e3 * harness.median(times)
  return out


def table(results: dict) -> str:
  rows = ["| dispatch | collectives | temporaries per device | vs compiler | fwd+bwd (median) "
          "| vs compiler | collective ops |", "|---|---|---|---|---|---|---|"]
  for (dispatch, how), r in results.items():
    base = results[dispatch, "compiler"]
    rows.append(f"| {dispatch} | {how} | {r['temporary_mib']:.1f} MiB | "
                f"{r['temporary_mib'] / base['temporary_mib']:.2f}x | {r['ms']:.1f} ms | "
                f"{r['ms'] / base['ms']:.2f}x | {r['collectives']} |")
  return "\n".join(rows)


def main(argv):
  del argv
  results = measure(devices=FLAGS.devices, experts=FLAGS.experts, tokens=FLAGS.tokens,
                    width=FLAGS.width, hidden=FLAGS.hidden,
                    capacity_factor=FLAGS.capacity_factor, rounds=FLAGS.rounds)
  body = (f"expert={FLAGS.devices} (fake CPU devices), E = {FLAGS.experts} experts "
          f"(mixtral-tiny's router, k = 2), N = {FLAGS.tokens} tokens, d = {FLAGS.width}, "
          f"F = {FLAGS.hidden}, capacity factor {FLAGS.capacity_factor}, float32; the "
          "gradient of the layer's loss in its parameters and inputs; medians of "
          f"{FLAGS.rounds} interleaved rounds.\n\n" + table(results))
  print(body)
  print("wrote", harness.write_result(FLAGS.out_dir, "expert-parallel-cpu",
                                      "Expert parallelism: explicit collectives or XLA's",
                                      body))


if __name__ == "__main__":
  define_flags()  # the devices must exist before jax is imported (in `measure`)
  harness.fake_cpu_devices(next((int(a.split("=", 1)[1]) for a in sys.argv
                                 if a.startswith("--devices=")), 8))
  app.run(main)
