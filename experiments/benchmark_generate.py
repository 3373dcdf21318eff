"""`python -m experiments.benchmark_generate [--mla]`: a short name for the generation
benchmark, experiments/benchmarks/generate.py (its flags and docstring)."""

from absl import app

from experiments.benchmarks.generate import main

if __name__ == "__main__":
  app.run(main)
