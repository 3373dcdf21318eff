"""Translation: King James (English) -> Reina-Valera 1909 (Spanish), the original Transformer.

    python -m experiments.train --config=configs/translate_kjv_rv.py --workdir=runs/en_es

Needs `apt-get install sword-text-kjv sword-text-sparv`. A joint BPE vocabulary is trained on
both sides of the training pairs and saved in the workdir; evaluation reports token loss and
accuracy and corpus BLEU of beam-search translations. Variants: (none) a 3+3-layer width-256
model, "tiny" for tests.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "translation"
  c.dataset.name = "kjv_reina_valera"
  c.dataset.source = "en"
  c.dataset.target = "es"
  c.dataset.seq_len = 96
  c.dataset.vocab_size = 8000
  c.model.preset = "transformer-tiny"  # the family; the fields below set its size
  c.model.width = 256
  c.model.depth = 3  # encoder blocks
  c.model.decoder_depth = 3
  c.model.num_heads = 4
  c.model.mlp_dim = 1024
  c.model.dropout_rate = 0.1
  c.model.kernel = "auto"
  c.batch_size = 64
  c.num_train_steps = 10000
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 1000
  c.eval_bleu_examples = 256  # translated at each evaluation
  c.eval_beam_size = 4
  c.optimizer.lr = 7e-4
  c.optimizer.warmup_steps = 1000
  c.optimizer.b2 = 0.98
  c.optimizer.weight_decay = 0.0

  if arg == "tiny":
    common.make_tiny(c)
    c.dataset.seq_len = 24
    c.dataset.vocab_size = 400
    c.model.width, c.model.depth, c.model.decoder_depth = 32, 1, 1
    c.model.num_heads, c.model.mlp_dim = 4, 64
    c.eval_bleu_examples = 8
    c.eval_beam_size = 2
  elif arg not in (None, ""):
    raise ValueError(f"unknown variant {arg!r}; valid: tiny (or none).")
  return c
