"""Long Range Arena Pathfinder at 32x32: are the two dots the ends of one dashed curve, among
distractor curves? Read as 1,024 pixel tokens, so the evidence is far apart in the sequence.

    python -m experiments.train --config=configs/lra_pathfinder.py \
        --workdir=runs/lra_pathfinder --config.model.kernel=retention

The images are generated on first use (`attention_jax.data.lra`). Variants: (none) sized for a
2-core CPU (20,000 training images, lra_pathfinder_small); "lra" LRA's size of data (160,000
training images) and a larger encoder for accelerators; "tiny" for tests.
"""

import ml_collections

from attention_jax.data import lra
from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.lra_config("lra_pathfinder_small", 1 + lra.PATHFINDER_SIZE ** 2,
                        lra.BYTE_OFFSET + 256)
  c.dataset.tokenizer = "pixels"
  c.batch_size = 16  # ~1,000 tokens a row: sized to about 20 minutes on 2 cores
  c.num_train_steps = 800
  if arg == "lra":
    c.batch_size = 32
    c.dataset.name = "lra_pathfinder"
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 128, 4, 8, 256
    c.num_train_steps = 20000
    c.eval_every_steps = c.checkpoint_every_steps = 2000
  elif arg == "tiny":
    common.make_tiny(c)
    c.dataset.name = "lra_pathfinder_tiny"
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 1, 4, 64
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: lra, tiny (or none).")
  return c
