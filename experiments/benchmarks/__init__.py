"""Benchmarks: each prints ratios measured side by side (one process, or interleaved
subprocesses) and never asserts a time (../shared/PERF.md). They share `harness` (the timer,
the interleaving, fake CPU devices); the training step's twin models are `plain_gpt` (plain
jax.numpy) and `torch_gpt` (PyTorch).

    python -m experiments.benchmarks.attention    # kernels against jax.nn and torch SDPA
    python -m experiments.benchmarks.train_step   # the trainer's step against PyTorch
    python -m experiments.benchmarks.scale        # compile time, host sync, remat memory
    python -m experiments.benchmarks.generate     # decoding against transformers
    python -m experiments.benchmarks.checkpoint   # memory of loading and exporting
    python -m experiments.benchmarks.lra          # LRA's efficiency table
    python -m experiments.benchmarks.sft          # LoRA over a bfloat16 frozen base
"""
