"""A GPT language model on the King James Bible, byte level.

    python -m experiments.train --config=configs/gpt_kjv.py --workdir=/tmp/gpt_kjv
    python -m experiments.train --config=configs/gpt_kjv.py:tiny --workdir=/tmp/tiny

Needs `apt-get install sword-text-kjv`. Variants: (none) a 6-layer width-384 model, "small"
the quickstart (configs/default.py), "tiny" for tests, "gpu" a GPT-2-small-sized model in
bfloat16 for one accelerator (what .ci/gpu_check trains; it prints tokens/s and MFU),
"gpt2_medium" GPT-2 medium's shape at 2,048 tokens, batch 256 (for experiments.plan).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "lm"
  c.dataset.name = "kjv_text"
  c.dataset.seq_len = 256
  c.dataset.pack = False  # True: whole verses packed with segment ids (a verse-level model)
  c.model.preset = "gpt-tiny"  # the family; the fields below set its size
  c.model.width = 384
  c.model.depth = 6
  c.model.num_heads = 6
  c.model.mlp_dim = 1536
  c.model.dropout_rate = 0.1
  c.batch_size = 32
  c.num_train_steps = 5000
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 200

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "And God said, "
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 0  # 0: no top-k

  if arg == "small":  # the quickstart: about 8 minutes on 2 CPU cores
    c.dataset.seq_len = 128
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 192, 4, 4, 768
    c.model.dropout_rate = 0.0
    c.batch_size = 32
    c.num_train_steps = 900
    c.log_every_steps = 50
    c.eval_every_steps = 300
    c.checkpoint_every_steps = 300
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 100
  elif arg == "tiny":  # seconds; what the tests run
    common.make_tiny(c, steps=20)
    c.dataset.seq_len = 32
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
    c.sample.max_new_tokens = 20
  elif arg == "gpu":  # GPT-2 small's shape on 1024-byte windows: a few minutes on an H100
    c.dataset.seq_len = 1024
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 768, 12, 12, 3072
    c.model.dropout_rate = 0.0
    c.precision = "bfloat16"
    c.parallelism = "mesh"
    c.batch_size = 32
    c.num_train_steps = 600
    c.log_every_steps = 50
    c.eval_every_steps = 600
    c.checkpoint_every_steps = 600
    c.eval_max_batches = 20
    c.optimizer.lr = 6e-4
    c.optimizer.warmup_steps = 100
  elif arg == "gpt2_medium":  # GPT-2 medium's shape at 2k context: what experiments.plan sizes
    c.dataset.seq_len = 2048
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 1024, 24, 16, 4096
    c.model.dropout_rate = 0.0
    c.precision = "bfloat16"
    c.batch_size = 256
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: small, tiny, gpu, gpt2_medium (or "
                     "none).")
  return c
