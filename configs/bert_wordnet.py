"""BERT text classification: WordNet 3.0 glosses -> their 45 supersenses (lexicographer files).

    python -m experiments.train --config=configs/bert_wordnet.py --workdir=runs/bert_wordnet

Needs `apt-get install wordnet-base`. A WordPiece vocabulary is trained on the training glosses
and saved in the workdir. Variants: (none) a 4-layer width-256 BERT, "tiny" for tests.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "classification"
  c.dataset.name = "wordnet_supersenses"
  c.dataset.seq_len = 64
  c.dataset.vocab_size = 8000
  c.model.preset = "bert-tiny"  # the family; the fields below set its size
  c.model.width = 256
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 1024
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.0  # lets every kernel (flash included) train it
  c.model.kernel = "auto"
  c.batch_size = 64
  c.num_train_steps = 5000
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.optimizer.lr = 5e-4
  c.optimizer.warmup_steps = 300
  c.optimizer.weight_decay = 0.01

  if arg == "tiny":
    common.make_tiny(c)
    c.dataset.seq_len = 24
    c.dataset.vocab_size = 500
    c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 32, 2, 4, 64
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: tiny (or none).")
  return c
