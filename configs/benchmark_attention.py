"""Attention kernel benchmark (experiments/benchmarks/attention.py).

    python -m experiments.benchmarks.attention --config=configs/benchmark_attention.py
    python -m experiments.benchmarks.attention --config=configs/benchmark_attention.py:smoke
    python -m experiments.benchmarks.attention --config=configs/benchmark_attention.py:gpu
    python -m experiments.benchmarks.attention --config=configs/benchmark_attention.py:gpu_check
    python -m experiments.benchmarks.attention --config=configs/benchmark_attention.py:ring
    ... --config.seq_lens='(1024, 4096)' --config.repeats=9
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.batch = 1
  c.heads = 8
  c.head_dim = 64
  c.dtype = "float32"
  c.seq_lens = (512, 1024, 2048, 4096, 8192, 16384)
  # Long-context run for the blockwise kernel only (forward+backward, `long_heads` heads).
  c.long_seq_lens = (32768, 65536)
  c.long_heads = 1
  c.implementations = ("flash", "dot_product", "xla", "torch")
  c.passes = ("forward", "forward_backward")
  c.causal = (False, True)
  c.repeats = 7  # timed runs per measurement (median), after one warm-up
  c.repeats_above_4096 = 3  # fewer runs where one call takes seconds
  c.memory_limit_gb = 12.0  # skip (but still report) implementations needing more temp memory
  c.error_len = 2048  # sequence length of the max-abs-error check against float64 numpy
  c.baseline = ""  # an implementation every row's speed is compared with ("" = none)
  # Ring attention on N fake devices vs one-device flash (causal forward+backward).
  c.ring_devices = (2, 4, 8)
  c.ring_seq_lens = (8192, 16384, 32768, 65536)
  c.ring_heads = 1
  c.ring_repeats = 3
  c.ring_time_max_len = 16384  # longer: memory only (a CPU call would take minutes)
  c.output_dir = "benchmark_results"
  c.results_dir = ""  # set (e.g. docs/results) to file the table with its date, machine, commit

  if arg == "smoke":  # seconds; what CI runs
    c.seq_lens = (128, 256)
    c.long_seq_lens = (1024,)
    c.repeats = 2
    c.repeats_above_4096 = 1
    c.error_len = 128
    c.ring_devices = (2,)
    c.ring_seq_lens = (256,)
    c.ring_repeats = 1
  elif arg == "quick":  # the T=4096 targets only
    c.seq_lens = (4096,)
    c.long_seq_lens = ()
    c.ring_devices = ()
  elif arg == "ring":  # ring attention only
    c.seq_lens, c.long_seq_lens = (), ()
  elif arg in ("gpu", "tpu", "gpu_check"):  # the published H100 setting: bf16, B=2, H=32,
    # D=128, to 32k; "gpu_check" is "gpu" cut to about 2 minutes (what .ci/gpu_check runs)
    c.batch, c.heads, c.head_dim, c.dtype = 2, 32, 128, "bfloat16"
    c.seq_lens = (1024, 2048, 4096, 8192, 16384, 32768)
    c.long_seq_lens = ()
    c.implementations = (("cudnn", "pallas_gpu") if arg == "gpu" else ("splash",)) + (
        "flash", "xla")
    c.baseline = c.implementations[0]
    c.repeats_above_4096 = 7  # an accelerator call takes milliseconds
    c.memory_limit_gb = 60.0  # of an 80 GB card; jax.nn's dense scores stop near T=16k
    c.error_len = 1024
    c.ring_devices = ()  # one accelerator: no ring
    c.output_dir = f"benchmark_results/{arg}"
    if arg == "gpu_check":
      c.implementations = ("cudnn", "pallas_gpu", "flash", "xla")
      c.baseline = "cudnn"
      c.seq_lens = (1024, 4096, 16384)
      c.repeats = c.repeats_above_4096 = 5
      c.memory_limit_gb = 80.0  # of the H200's 141 GB (XLA gets 90% in .ci/gpu_check)
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: smoke, quick, ring, gpu, gpu_check, "
                     "tpu (or none).")
  return c
