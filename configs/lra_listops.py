"""Long Range Arena ListOps: the value of a nested list of MIN / MAX / MED / SUM-mod-10 over
digits, read from its tokens (10 classes); a test of long-range hierarchical reasoning.

    python -m experiments.train --config=configs/lra_listops.py --workdir=runs/lra_listops \
        --config.model.kernel=linear

The kernel is chosen by name (any of `kernels.names()`; `experiments.lra_sweep` runs them all).
Variants: (none) sized for a 2-core CPU (lists of 100-500 tokens, dataset lra_listops_small, a
2-layer width-64 encoder); "lra" LRA's own setting (lists of 500-2,000 tokens, 4 layers, 8
heads, width 512, MLP 1,024, batch 32, 5,000 steps; for accelerators); "tiny" for tests. The
data is generated on first use (`attention_jax.data.lra`).
"""

import ml_collections

from attention_jax.data import lra
from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # The classification token and up to 499 list tokens.
  c = common.lra_config("lra_listops_small", 512, lra.LISTOPS_VOCAB_SIZE)
  # Measured on 2 cores with dot_product: 0.92 steps/s, so 1,000 steps take about 18 minutes.
  c.num_train_steps = 1000
  if arg == "lra":
    c.dataset.name = "lra_listops"
    c.dataset.seq_len = 2000
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 512, 4, 8, 1024
    c.num_train_steps = 5000
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    # LRA: 0.05 x linear warmup x rsqrt decay, which peaks at 0.05 / sqrt(1000) = 1.6e-3.
    c.optimizer.lr = 1.6e-3
    c.optimizer.warmup_steps = 1000
  elif arg == "tiny":
    common.make_tiny(c)
    c.dataset.name = "lra_listops_tiny"
    c.dataset.seq_len = 100
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: lra, tiny (or none).")
  return c
