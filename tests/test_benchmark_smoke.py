"""Smoke runs of the benchmarks on tiny shapes (never asserting a time)."""

import json
import math
import re

import pytest

from configs import benchmark_attention as benchmark_config
from experiments.benchmarks import attention as benchmark_attention


def test_benchmark_smoke_writes_results(tmp_path):
  config = benchmark_config.get_config("smoke")
  config.output_dir = str(tmp_path)
  config.implementations = ("flash", "xla")
  config.results_dir = str(tmp_path / "results")
  results = benchmark_attention.run(config, log=lambda *_: None)
  timed = [r for r in results["rows"] if r["median_s"]]
  assert {(r["impl"], r["pass_"], r["causal"]) for r in timed if r["seq_len"] == 256} == {
      (i, p, c) for i in ("flash", "xla") for p in ("forward", "forward_backward")
      for c in (False, True)}
  assert all(r["gflops"] > 0 and r["temp_mb"] > 0 for r in timed)
  assert max(results["max_abs_error"].values()) < 2e-6
  assert results["ratios"][256]["flash_vs_xla_forward"] > 0
  saved = json.loads((tmp_path / "benchmark_attention.json").read_text())
  assert saved["rows"] == json.loads(json.dumps(results["rows"]))
  assert (tmp_path / "benchmark_attention.md").read_text().startswith("| T |")
  ring = {r["impl"]: r for r in results["ring"]}  # 2 fake devices, in a subprocess
  assert set(ring) == {"ring", "flash"} and ring["ring"]["devices"] == 2
  assert ring["flash"]["of_flash"] == 1.0 and ring["ring"]["memory_mb"] > 0
  assert "| 2 | 256 | ring |" in (tmp_path / "benchmark_attention.md").read_text()
  (filed,) = (tmp_path / "results").glob("*-attention-kernels-cpu.md")  # docs/results' form
  head, body = filed.read_text().split("\n\n", 2)[1:]
  assert re.search(r"- Measured: 20\d\d-\d\d-\d\d\n- Machine: .+ cores.+\n- Commit: `[0-9a-f]{7}",
                   head) and body.startswith("| T |")


def test_benchmark_reference_follows_the_kernel_options():
  """The error check's float64 reference soft-caps and adds the sink where a spec says so
  (a sink of 2.0 moves the output by about 7% at 64 keys, so ignoring it would fail)."""
  config = benchmark_config.get_config("smoke")
  config.implementations = ("flash:logits_soft_cap=1.0", "flash:sinks=2.0",
                            "dot_product:sinks=2.0,logits_soft_cap=1.0")
  config.error_len = 64
  errors = benchmark_attention.max_abs_errors(config)
  assert len(errors) == 6 and max(errors.values()) < 2e-6, errors


@pytest.fixture(scope="module")
def train_step_jax():
  """The JAX worker of the training-step benchmark at the tiny shape: (spec, result)."""
  from experiments.benchmarks import train_step as bench
  spec = bench.make_spec(bench.load_config(tiny=True), steps=2, warmup=1)
  return spec, bench.run_worker("jax", spec)


def test_train_step_benchmark_worker_smoke(train_step_jax):
  from experiments.benchmarks import train_step as bench
  _, result = train_step_jax
  assert result["impl"] == "jax" and result["kernel"] == "auto"
  assert result["param_count"] == 26_368  # width 32, depth 2, MLP 64, 256 bytes, 32 positions
  assert result["steps_per_s"] > 0 and result["tokens_per_s"] > 0
  assert min(result[k] for k in ("user_s_per_step", "sys_s_per_step", "minflt_per_step")) >= 0
  assert abs(result["loss"] - math.log(256)) < 0.5  # random bytes: about uniform
  summary = bench.summarize([dict(result, round=0)], ["jax"])
  assert summary["impls"]["jax"]["rounds"] == 1 and summary["jax_over_best_torch"] is None
  assert bench.format_table(summary).startswith("| impl |")


def test_train_step_benchmark_torch_twin_has_our_parameters(train_step_jax):
  pytest.importorskip("torch")
  from experiments.benchmarks import train_step as bench
  spec, jax_result = train_step_jax
  torch_result = bench.run_worker("torch_eager", spec)
  summary = bench.summarize([jax_result, torch_result], ["jax", "torch_eager"])
  bench.check_param_counts(summary)  # raises, naming both counts, if they differ
  assert torch_result["param_count"] == jax_result["param_count"]
  assert summary["jax_over_best_torch"] > 0
  assert abs(torch_result["loss"] - math.log(256)) < 0.5


def test_plain_jax_twin_is_our_gpt(train_step_jax):
  """The plain-function GPT computes our GPT's logits from the same weights (q, k and v fused
  into one matrix), has its parameter count, and its benchmark worker runs."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from attention_jax.training import tasks
  from experiments.benchmarks import plain_gpt
  from experiments.benchmarks import train_step as bench
  spec, jax_result = train_step_jax
  task = tasks.create(ml_collections.ConfigDict(spec["config"]))
  model = task.model()
  tokens = jnp.asarray(bench.random_batch(spec["shape"], 1)[:, :-1])
  shapes = jax.eval_shape(model.init, jax.random.key(3), tokens)["params"]
  leaves, treedef = jax.tree.flatten(shapes)  # every weight O(1): activations off the linear part
  keys = jax.random.split(jax.random.key(4), len(leaves))
  ours = treedef.unflatten([0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  flat = lambda a: a.reshape(a.shape[0], -1)
  blocks = []
  for i in range(spec["shape"]["depth"]):
    block = ours[f"block_{i}"]
    attention = {n: block["attention"][n] for n in ("query", "key", "value")}
    blocks.append(dict(
        attention_norm=(block["attention_norm"]["scale"], block["attention_norm"]["bias"]),
        qkv=(jnp.concatenate([flat(p["kernel"]) for p in attention.values()], axis=1),
             jnp.concatenate([p["bias"].reshape(-1) for p in attention.values()])),
        out=(block["attention"]["out"]["kernel"].reshape(-1, spec["shape"]["width"]),
             block["attention"]["out"]["bias"]),
        mlp_norm=(block["mlp_norm"]["scale"], block["mlp_norm"]["bias"]),
        fc1=(block["mlp"]["fc1"]["kernel"], block["mlp"]["fc1"]["bias"]),
        fc2=(block["mlp"]["fc2"]["kernel"], block["mlp"]["fc2"]["bias"])))
  plain = dict(token=ours["embed"]["token"]["embedding"],
               position=ours["embed"]["position"]["embedding"], blocks=blocks,
               final_norm=(ours["final_norm"]["scale"], ours["final_norm"]["bias"]))
  init, forward = plain_gpt.plain_gpt(spec["shape"])
  assert jax.tree.structure(init(jax.random.key(0))) == jax.tree.structure(plain)
  expected = model.apply({"params": ours}, tokens)
  assert jnp.abs(forward(plain, tokens) - expected).max() < 1e-6 * jnp.abs(expected).max()
  result = bench.run_worker("jax_plain", spec)
  assert result["param_count"] == jax_result["param_count"]
  assert abs(result["loss"] - math.log(256)) < 0.5


def test_the_twins_take_the_trainers_learning_rate_at_every_step(train_step_jax):
  """No second copy of the schedule: the twins read the trainer's learning rate per step
  (optim.make_optimizer's, as its optimizer state reports it) from the spec."""
  import jax.numpy as jnp
  import ml_collections
  from attention_jax.training import optim
  from experiments.benchmarks import train_step as bench
  spec, _ = train_step_jax
  config = ml_collections.ConfigDict(spec["config"])
  config.optimizer.warmup_steps = 2  # a warm-up and a decay inside the steps the twins take
  config.num_train_steps = 5
  spec = bench.make_spec(config, steps=4, warmup=1)
  optimizer = optim.make_optimizer(config.optimizer, config.num_train_steps)
  params = {"w": jnp.ones((2, 2))}
  state, trainer = optimizer.init(params), []
  for _ in range(len(spec["optimizer"]["lr_values"])):
    _, state = optimizer.update({"w": jnp.ones((2, 2))}, state, params)
    trainer.append(float(optim.current_learning_rate(state)))
  factor = bench.lr_factor(spec["optimizer"])
  twin = [factor(step) * spec["optimizer"]["lr"] for step in range(len(trainer))]
  assert twin == pytest.approx(trainer, rel=1e-6) and len(set(trainer)) > 3


def test_interleaving_alternates_the_candidates_after_a_warm_up():
  from experiments.benchmarks import harness
  calls, rounds = [], []
  samples = harness.interleaved({"a": lambda: calls.append("a") or len(calls),
                                 "b": lambda: calls.append("b") or len(calls)}, 2,
                                after_round=rounds.append)
  assert calls == ["a", "b"] * 3 and samples == {"a": [3, 5], "b": [4, 6]} and rounds == [0, 1]
  assert harness.timed(lambda: None) >= 0.0
  with pytest.raises(RuntimeError, match="before jax is imported"):
    harness.fake_cpu_devices(2)  # this process has jax already


def test_benchmark_takes_kernel_names_and_a_baseline(tmp_path):
  """The accelerator variants name registry kernels and compare each row with a baseline; a
  Pallas kernel in interpret mode stands in for the GPU here."""
  gpu = benchmark_config.get_config("gpu")
  assert gpu.baseline == "cudnn" and gpu.dtype == "bfloat16" and max(gpu.seq_lens) == 32768
  assert set(gpu.implementations) == {"cudnn", "pallas_gpu", "flash", "xla"}
  config = benchmark_config.get_config("smoke")
  config.output_dir = str(tmp_path)
  config.seq_lens, config.long_seq_lens, config.passes = (128,), (), ("forward",)
  config.implementations = ("pallas_gpu:interpret=true", "xla")
  config.baseline = "pallas_gpu:interpret=true"
  config.ring_devices = ()
  results = benchmark_attention.run(config, log=lambda *_: None)
  rows = {(r["impl"], r["causal"]): r for r in results["rows"]}
  assert rows[("pallas_gpu:interpret=true", True)]["of_baseline"] == 1.0
  assert rows[("xla", False)]["of_baseline"] > 0
  assert max(results["max_abs_error"].values()) < 2e-6
  assert " of pallas_gpu:interpret=true |" in (tmp_path / "benchmark_attention.md").read_text()


def test_lra_efficiency_benchmark_smoke(tmp_path):
  """A subprocess (the benchmark's own flags): two lengths, the baseline and one linear
  kernel, which alone runs at the long length."""
  import subprocess
  import sys
  out = tmp_path / "lra.json"
  run = subprocess.run(
      [sys.executable, "-m", "experiments.benchmarks.lra", "--lengths=64", "--long=128",
       "--kernels=dot_product,linear", "--repeats=1", "--batch=1", "--width=32",
       f"--output={out}"], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  results = json.loads(out.read_text())["results"]
  assert set(results["64"]) == {"dot_product", "linear"} and set(results["128"]) == {"linear"}
  assert all(c["steps_per_s"] > 0 and c["memory_gb"] > 0 for c in results["64"].values())
  assert "| LRA: Performer |" in run.stdout and "| linear | " in run.stdout


def test_generate_benchmark_counts_the_cache_bytes_of_each_attention():
  """The --mla table's bytes per token: MLA's latent (16 + 4 numbers per layer), its
  materialised keys (4 heads x 12) and values (4 x 6), a GQA Llama's 2 x 2 heads x 8."""
  from attention_jax import models
  from experiments.benchmarks.generate import cache_bytes_per_token
  deepseek = models.create("deepseek-tiny")
  assert cache_bytes_per_token(deepseek, 24) == 2 * (16 + 4) * 4  # depth 2, float32
  assert cache_bytes_per_token(models.with_options(deepseek, mla_decode="materialised"),
                               24) == 2 * (4 * 12 + 4 * 6) * 4
  assert cache_bytes_per_token(models.create("llama-tiny"), 24) == 2 * (2 * 2 * 8) * 4


def test_moe_dispatch_benchmark_smoke():
  """Each dispatch compiles, runs and is timed at a tiny shape; the table has every row."""
  from experiments.benchmarks import moe as bench
  results = {4: bench.measure(4, tokens=32, width=8, hidden=8, chosen=2, capacity_factor=1.0,
                              rounds=1, log=lambda *_: None)}
  assert set(results[4]) == {"dropless (blocked)", "dropless (ragged_dot)", "capacity",
                             "dense"}
  for row in results[4].values():
    assert row["ms"] > 0 and row["compile_s"] > 0 and row["temporary_mib"] is not None
  assert bench.table(results).count("| 4 |") == 4


def test_expert_parallel_benchmark_smoke():
  """Both dispatches with explicit and compiler collectives on 8 fake devices, tiny: each
  is timed and sized, and says which collectives it compiled to."""
  from experiments.benchmarks import expert_parallel as bench
  results = bench.measure(devices=8, experts=8, tokens=64, width=16, hidden=16,
                          capacity_factor=1.25, rounds=1, log=lambda *_: None)
  assert set(results) == {(d, c) for d in ("dropless", "capacity")
                          for c in ("explicit", "compiler")}
  for row in results.values():
    assert row["ms"] > 0 and row["temporary_mib"] > 0
  assert "all-to-all" in results["capacity", "explicit"]["collectives"]
  assert "reduce-scatter" in results["dropless", "explicit"]["collectives"]
  assert bench.table(results).count("| explicit |") == 2


def test_whisper_benchmark_smoke():
  """Ours and transformers' Whisper on the same exported weights: the same greedy tokens,
  and the table's three measures for each."""
  pytest.importorskip("transformers")
  from experiments.benchmarks import whisper
  result = whisper.measure("whisper-test-tiny", 4, 1, log=lambda *_: None)
  assert result["same_tokens"] and result["window_s"] == 1.28
  for who in ("ours", "theirs"):
    assert result[who]["encoder_s"] > 0 and result[who]["audio_s_per_s"] > 0
  assert whisper.table(result, "whisper-test-tiny", 4).count("\n| ") == 4  # 3 rows, header
