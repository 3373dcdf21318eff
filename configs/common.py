"""Fields every training config shares, so any of them can be overridden the same way:
--config.seed=1 --config.batch_size=64 --config.optimizer.lr=3e-4 --config.model.kernel=flash
"""

import ml_collections

from attention_jax.training import finetune, parallel


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "lm"
  c.seed = 0
  c.batch_size = 32  # global, over all devices and hosts
  c.grad_accum_steps = 1  # micro-batches per update (batch_size must divide evenly)
  c.num_train_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2  # the latest ones; the best by eval/loss is kept as well
  c.eval_batch_size = 0  # 0: batch_size
  c.eval_max_batches = 0  # 0: the whole evaluation split
  # One jit-compiled step over a named device mesh (see attention_jax/training/parallel.py):
  # --config.mesh.fsdp=8 shards parameters, --config.mesh.tensor=2 is Megatron tensor
  # parallelism, --config.mesh.sequence=4 ring attention, --config.mesh.expert=4 splits a
  # mixture's experts; data=-1 takes the rest.
  c.parallelism = "mesh"  # "pmap": the same step, data parallel only
  c.mesh = parallel.default_config()
  c.num_devices = 0  # 0: all devices
  c.precision = "float32"  # or "bfloat16" (bf16 compute, f32 parameters)
  # Start from a pretrained checkpoint (a name such as "all-MiniLM-L6-v2" or a Hugging Face
  # directory) or another training workdir; heads (finetune.heads) start fresh.
  c.init_from = ""
  c.finetune = finetune.default_config()  # what trains: full, linear_probe, top_k_layers, lora

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = ""
  c.dataset.data_dir = ""  # "": ~/tensorflow_datasets
  c.dataset.eval_split = "validation"

  c.model = ml_collections.ConfigDict()
  c.model.preset = ""
  c.model.kernel = "auto"
  c.model.remat = "none"  # or "full", "dots", "dots_with_no_batch_dims" (per-block jax.checkpoint)
  c.model.scan_layers = False  # blocks under nn.scan, parameters stacked on a `layers` axis

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.schedule = "cosine"
  c.optimizer.final_lr_fraction = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-9
  c.optimizer.weight_decay = 0.1
  c.optimizer.clip_norm = 1.0
  return c


def make_tiny(c: ml_collections.ConfigDict, steps: int = 10) -> ml_collections.ConfigDict:
  """The settings every `tiny` variant shares: a few steps of a small batch, logging every
  step, evaluating and checkpointing twice, no dropout (the tests compare exact losses)."""
  c.batch_size = 8
  c.num_train_steps = steps
  c.log_every_steps = 1
  c.eval_every_steps = steps // 2
  c.checkpoint_every_steps = steps // 2
  c.eval_max_batches = 4
  c.optimizer.warmup_steps = max(steps // 4, 1)
  c.model.dropout_rate = 0.0
  return c


def lra_config(dataset: str, seq_len: int, vocab_size: int) -> ml_collections.ConfigDict:
  """What the Long Range Arena configs share: a BERT-family encoder classifying a token
  sequence (classification token in front, CLS pooling), sized for a 2-core CPU, with the
  attention kernel chosen by `--config.model.kernel=NAME`."""
  c = base_config()
  c.task = "classification"
  c.dataset.name = dataset
  c.dataset.seq_len = seq_len
  c.dataset.vocab_size = vocab_size
  c.model.preset = "bert-tiny"  # the family (post-LN encoder, CLS pooling); sizes below
  c.model.width, c.model.depth, c.model.num_heads, c.model.mlp_dim = 64, 2, 4, 128
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.0  # lets every kernel train it
  c.model.kernel = "auto"
  c.batch_size = 32
  c.num_train_steps = 2000
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 200
  c.optimizer.weight_decay = 0.01
  return c
