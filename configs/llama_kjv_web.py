"""A small Llama pretrained from scratch on English Bible text (KJV + World English Bible),
with a byte-level BPE whose ChatML tokens are reserved, so that it can then be exported and
instruction-tuned (configs/sft_chat.py; docs/finetuning.md, "Instruction tuning, end to end").

    python -m experiments.train --config=configs/llama_kjv_web.py --workdir=runs/llama_bible
    python -m experiments.export --workdir=runs/llama_bible --out=checkpoints/llama_bible

Needs `apt-get install sword-text-kjv sword-text-web`. Variants: (none) a 4-layer width-256
model with grouped-query attention and tied embeddings (4.2 M parameters), about 16 minutes on
2 CPU cores; "tiny" for tests.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "lm"
  c.dataset.name = "kjv_web_text"
  c.dataset.tokenizer = "bpe"  # byte-level BPE trained on the training split
  c.dataset.vocab_size = 4096
  c.dataset.seq_len = 256
  c.dataset.pack = False
  c.model.preset = "llama-tiny"  # the family; the fields below set its size
  c.model.width = 256
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = 768
  c.model.tie_embeddings = True
  c.batch_size = 16
  c.num_train_steps = 800
  c.log_every_steps = 50
  c.eval_every_steps = 400
  c.checkpoint_every_steps = 400
  c.eval_max_batches = 20
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 100

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "In the beginning"
  c.sample.max_new_tokens = 40
  c.sample.temperature = 0.0
  c.sample.top_k = 0

  if arg == "tiny":  # seconds; what the tests run
    common.make_tiny(c, steps=4)
    c.dataset.vocab_size = 300
    c.dataset.seq_len = 32
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
    c.sample.max_new_tokens = 4
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: tiny (or none).")
  return c
