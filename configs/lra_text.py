"""Long byte-level text classification (our stand-in for LRA's byte-level IMDB): each KJV
chapter as UTF-8 bytes (3,500 on average, up to 13,000), labelled with its book's genre (law,
history, wisdom and poetry, prophets, gospels and acts, epistles, apocalyptic).

    python -m experiments.train --config=configs/lra_text.py --workdir=runs/lra_text \
        --config.model.kernel=performer

Needs `apt-get install sword-text-kjv`. Variants: (none) sized for a 2-core CPU (the first
1,023 bytes of each chapter); "lra" LRA's text length (4,000 bytes, 4 layers of width 256);
"tiny" for tests.
"""

import ml_collections

from attention_jax.data import lra
from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.lra_config("kjv_chapter_genres", 1024, lra.BYTE_OFFSET + 256)
  c.dataset.tokenizer = "bytes"
  c.batch_size = 16  # twice ListOps' attention per token: sized to about 20 minutes
  c.num_train_steps = 600
  if arg == "lra":
    c.dataset.seq_len = 4000
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 256, 4, 4, 1024
    c.batch_size = 32
    c.num_train_steps = 5000
    c.eval_every_steps = c.checkpoint_every_steps = 1000
  elif arg == "tiny":
    common.make_tiny(c)
    c.dataset.seq_len = 128
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: lra, tiny (or none).")
  return c
