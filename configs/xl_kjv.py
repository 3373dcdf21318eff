"""Transformer-XL language model on the King James Bible, byte level.

    python -m experiments.train --config=configs/xl_kjv.py --workdir=runs/xl_kjv

Needs `apt-get install sword-text-kjv`. Each example is `dataset.segments` consecutive segments
of `dataset.seq_len` bytes read with segment memory (`model.mem_len`). Variants: (none) a
6-layer width-256 model, "tiny" for tests.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "xl_lm"
  c.dataset.name = "kjv_text"
  c.dataset.seq_len = 64
  c.dataset.segments = 4
  c.model.preset = "transformer-xl-tiny"  # the family; the fields below set its size
  c.model.kernel = "relative"
  c.model.width = 256
  c.model.depth = 6
  c.model.num_heads = 4
  c.model.mlp_dim = 1024
  c.model.mem_len = 64
  c.model.cutoffs = ()  # 256 byte tokens: a plain softmax
  c.model.dropout_rate = 0.1
  c.batch_size = 32
  c.num_train_steps = 5000
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 200

  if arg == "tiny":
    common.make_tiny(c)
    c.dataset.seq_len = 16
    c.dataset.segments = 2
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
    c.model.mem_len = 16
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: tiny (or none).")
  return c
