"""Smoke run of the attention benchmark on tiny shapes (never asserts a time)."""

import json

from configs import benchmark_attention as benchmark_config
from experiments import benchmark_attention


def test_benchmark_smoke_writes_results(tmp_path):
  config = benchmark_config.get_config("smoke")
  config.output_dir = str(tmp_path)
  config.implementations = ("flash", "xla")
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
