"""A mixture of experts' dispatches side by side: dropless (sorted by expert; grouped matmuls
in blocks of rows, `layers.grouped_matmul`, or `jax.lax.ragged_dot`), capacity (a fixed
buffer per expert) and the dense reference (every expert on every token):
the step time of forward + backward, the compiled program's temporaries, and the compile's
time, for each number of experts.

    python -m experiments.benchmarks.moe                      # E = 8 and 32, files the table
    python -m experiments.benchmarks.moe --experts=4 --tokens=64 --rounds=1 --out_dir=/tmp

Forward + backward is the gradient of a loss of the outputs with respect to the tokens, the
router logits and the experts' weights (as training takes it). Interleaved rounds, medians
(../shared/PERF.md); ratios are to the dense reference of the same E. The temporaries say
whether a backward densifies: the dense reference's grow as E · N · F, a dispatch that only
computes the chosen experts' as k · N · F.
"""

from __future__ import annotations

import functools
import time

from absl import app, flags

from experiments.benchmarks import harness

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run, so that importing this module beside
  other benchmarks defines nothing twice)."""
  flags.DEFINE_list("experts", ["8", "32"], "Numbers of experts (E).")
  flags.DEFINE_integer("tokens", 4096, "Tokens per step (N).")
  flags.DEFINE_integer("width", 256, "Model width (d).")
  flags.DEFINE_integer("hidden", 256, "Each expert's width (F).")
  flags.DEFINE_integer("chosen", 2, "Experts per token (k).")
  flags.DEFINE_float("capacity_factor", 1.25, "The capacity dispatch's factor.")
  flags.DEFINE_integer("rounds", 7, "Interleaved rounds.")
  flags.DEFINE_string("out_dir", "docs/results", "Where the table is filed.")


def problem(num_experts: int, tokens: int, width: int, hidden: int, seed: int = 0):
  """(tokens [N, d], router logits [N, E], gate, up [E, d, F], down [E, F, d])."""
  import jax  # pylint: disable=import-outside-toplevel
  keys = jax.random.split(jax.random.key(seed), 5)
  x = jax.random.normal(keys[0], (tokens, width))
  logits = jax.random.normal(keys[1], (tokens, num_experts))
  gate, up = (width ** -0.5 * jax.random.normal(k, (num_experts, width, hidden))
              for k in keys[2:4])
  down = hidden ** -0.5 * jax.random.normal(keys[4], (num_experts, hidden, width))
  return x, logits, gate, up, down


def dispatches(chosen: int, capacity_factor: float) -> dict:
  """{name: f(tokens, logits, gate, up, down) -> outputs [N, d]}, routed as Mixtral."""
  from attention_jax.layers import moe  # pylint: disable=import-outside-toplevel

  def routed(dispatch):
    def run(x, logits, gate, up, down):
      weights, experts, _ = moe.route(logits, chosen, True)
      return dispatch(x, weights, experts, gate, up, down, "silu")
    return run

  capacity = lambda *a: moe.with_capacity(*a, capacity_factor=capacity_factor)[0]
  ragged = functools.partial(moe.dropless, matmul="ragged_dot")
  return {"dropless (blocked)": routed(moe.dropless), "dropless (ragged_dot)": routed(ragged),
          "capacity": routed(capacity), "dense": routed(moe.dense_reference)}


def measure(num_experts: int, *, tokens: int, width: int, hidden: int, chosen: int,
            capacity_factor: float, rounds: int, log=print) -> dict:
  """{dispatch: {"ms", "temporary_mib", "compile_s"}} of forward + backward at E experts."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  args = problem(num_experts, tokens, width, hidden)
  steps, out = {}, {}
  for name, forward in dispatches(chosen, capacity_factor).items():
    grad = jax.jit(jax.grad(lambda *a, f=forward: jnp.sum(jnp.tanh(f(*a))),
                            argnums=(0, 1, 2, 3, 4)))
    start = time.perf_counter()
    compiled = grad.lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    out[name] = {"compile_s": compile_s,
                 "temporary_mib": memory.temp_size_in_bytes / 2 ** 20 if memory else None}
    steps[name] = functools.partial(harness.timed,
                                    lambda c=compiled: jax.block_until_ready(c(*args)))
  samples = harness.interleaved(steps, rounds,
                                after_round=lambda r: log(f"E={num_experts}: round {r + 1}/"
                                                          f"{rounds}"))
  for name, times in samples.items():
    out[name]["ms"] = 1e3 * harness.median(times)
  return out


def table(results: dict) -> str:
  rows = ["| E | dispatch | fwd+bwd (median) | vs dense | temporaries | vs dense | compile |",
          "|---|---|---|---|---|---|---|"]
  for experts, by_name in results.items():
    dense = by_name["dense"]
    for name, r in by_name.items():
      rows.append(f"| {experts} | {name} | {r['ms']:.1f} ms | {r['ms'] / dense['ms']:.2f}x | "
                  f"{r['temporary_mib']:.1f} MiB | "
                  f"{r['temporary_mib'] / dense['temporary_mib']:.2f}x | "
                  f"{r['compile_s']:.2f} s |")
  return "\n".join(rows)


def main(argv):
  del argv
  results = {int(e): measure(int(e), tokens=FLAGS.tokens, width=FLAGS.width,
                             hidden=FLAGS.hidden, chosen=FLAGS.chosen,
                             capacity_factor=FLAGS.capacity_factor, rounds=FLAGS.rounds)
             for e in FLAGS.experts}
  body = (f"N = {FLAGS.tokens} tokens, d = {FLAGS.width}, F = {FLAGS.hidden}, "
          f"k = {FLAGS.chosen}, capacity factor {FLAGS.capacity_factor}, float32; the "
          "gradient of a loss of the outputs with respect to tokens, router logits and "
          f"experts' weights; medians of {FLAGS.rounds} interleaved rounds.\n\n"
          + table(results))
  print(body)
  print("wrote", harness.write_result(FLAGS.out_dir, "moe-dispatch-cpu",
                                      "Mixture-of-experts dispatch: dropless, capacity, dense",
                                      body))


if __name__ == "__main__":
  define_flags()
  app.run(main)
