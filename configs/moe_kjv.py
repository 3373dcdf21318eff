"""A mixture-of-experts language model on the King James Bible, byte level, with the dense
models it is measured against.

    python -m experiments.train --config=configs/moe_kjv.py --workdir=/tmp/moe_kjv
    python -m experiments.train --config=configs/moe_kjv.py:dense_active --workdir=/tmp/dense
    python -m experiments.visualize --workdir=/tmp/moe_kjv     # expert_load.png

Needs `apt-get install sword-text-kjv`. The mixture: a Mixtral-style decoder (pre-RMSNorm,
rotary, GQA) of width 256 and depth 4 whose MLPs are 8 SwiGLU experts of width 256, 2 per
token, with the load-balancing loss (0.01) and router z-loss (0.001). Dispatched with
capacity (factor 1.25; the dropped fraction is logged), as its measured runs were;
`--config.model.moe_dispatch=dropless` drops nothing (its blocked grouped matmul ran within
1.1–1.3x of capacity's time in docs/results/2026-12-05-moe-dispatch-cpu.md;
`--config.model.grouped_matmul=ragged_dot` is XLA's, dense on the CPU). On an expert axis
(`--config.mesh.expert=N`) tokens travel by shard_map collectives
(`--config.model.expert_collectives=compiler` leaves it to XLA). Variants:
"dense_active" a Llama of the same shape whose one MLP is as wide as the two chosen experts
(the same parameters per token), "dense_total" one as wide as all 8 (the same parameters in
all), "tiny" for tests, "deepseek_v3" DeepSeek-V3 itself for `experiments.plan` (README: does it
fit on v5p:8x8x8 with expert=64?).
"""

import ml_collections

from configs import common

EXPERTS, CHOSEN, EXPERT_WIDTH = 8, 2, 256


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "lm"
  c.dataset.name = "kjv_text"
  c.dataset.seq_len = 128
  c.dataset.pack = False
  c.model.preset = "mixtral-tiny"  # the family; the fields below set its size
  c.model.width = 256
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.mlp_dim = EXPERT_WIDTH
  c.model.num_experts = EXPERTS
  c.model.experts_per_token = CHOSEN
  c.model.router_aux_loss_coef = 0.01
  c.model.router_z_loss_coef = 0.001
  c.model.moe_dispatch = "capacity"
  c.model.capacity_factor = 1.25
  c.model.grouped_matmul = "blocked"  # dropless: "blocked" or "ragged_dot"
  c.model.expert_collectives = "explicit"  # on an expert axis: "explicit" or "compiler"
  c.batch_size = 32
  c.num_train_steps = 600
  c.log_every_steps = 25
  c.eval_every_steps = 300
  c.checkpoint_every_steps = 300
  c.eval_max_batches = 50
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 100

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "And God said, "
  c.sample.max_new_tokens = 200
  c.sample.temperature = 0.8
  c.sample.top_k = 0

  variant = arg or ""
  if variant in ("dense_active", "dense_total"):
    c.model.preset = "llama-tiny"
    for field in ("num_experts", "experts_per_token", "router_aux_loss_coef",
                  "router_z_loss_coef", "moe_dispatch", "capacity_factor", "grouped_matmul",
                  "expert_collectives"):
      del c.model[field]
    c.model.mlp_dim = EXPERT_WIDTH * (CHOSEN if variant == "dense_active" else EXPERTS)
  elif variant == "tiny":  # seconds; what the tests run
    common.make_tiny(c, steps=10)
    c.dataset.seq_len = 32
    c.model.width, c.model.depth, c.model.num_heads, c.model.num_kv_heads = 32, 2, 4, 2
    c.model.mlp_dim, c.model.num_experts = 16, 4
    c.sample.max_new_tokens = 20
  elif variant == "deepseek_v3":  # DeepSeek-V3's preset at 4k context, for experiments.plan
    # Its own vocabulary (the byte tokenizer's 256 ids padded to 129,280), scanned layers
    # above the 3 dense ones, capacity dispatch: dropless sizes each device's buffers for all
    # of the expert axis's assignments, which at expert=64 needs 186 GB of temporaries on
    # a v5p (the TPU compiler's refusal).
    c.model = ml_collections.ConfigDict({
        "preset": "deepseek-v3", "depth": 61, "vocab_size": 129280, "kernel": "flash",
        "remat": "full", "scan_layers": True,
        "moe_dispatch": "capacity", "capacity_factor": 1.25, "grouped_matmul": "blocked",
        "expert_collectives": "explicit", "router_aux_loss_coef": 0.0,
        "router_z_loss_coef": 0.0})
    c.dataset.seq_len = 4096
    c.precision = "bfloat16"
    c.batch_size = 512  # sequences of 4096 tokens: 2.1M tokens a step
  elif variant:
    raise ValueError(f"unknown variant {arg!r}; valid: dense_active, dense_total, tiny, "
                     "deepseek_v3 (or none).")
  return c
