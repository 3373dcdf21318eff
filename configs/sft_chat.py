"""Instruction fine-tuning (SFT) of a Llama-family checkpoint on chat conversations.

    python -m experiments.train --config=configs/sft_chat.py --workdir=runs/sft \
        --config.init_from=checkpoints/my-llama --config.dataset.train_file=train.jsonl \
        --config.dataset.eval_file=eval.jsonl --config.finetune.mode=lora

`init_from` is a Hugging Face Llama / Mistral / Qwen2 directory with tokenizer.json and a chat
template (or an sft workdir); its architecture replaces the preset's. The data are JSONL lines
{"messages": [...]} or {"prompt": ..., "response": ...}; the loss is on assistant tokens only.
Variants: (none) LoRA on every projection; "full" full fine-tuning; "tiny" for tests;
"bible" and "bible_full" the end-to-end demonstration of docs/finetuning.md: LoRA or full
fine-tuning of the small Llama of configs/llama_kjv_web.py (exported to
checkpoints/llama_bible) on `experiments.make_instructions --out=data/instructions --max_per_task=15000`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.task = "sft"
  c.dataset.train_file = ""
  c.dataset.eval_file = ""
  c.dataset.seq_len = 512  # tokens per packed row (conversations are packed whole)
  c.model.preset = "llama-tiny"  # the family; init_from's architecture sets everything else
  c.model.kernel = "auto"
  c.finetune.heads = ()  # nothing new: the LM head is the checkpoint's
  c.finetune.mode = "lora"
  c.finetune.lora_rank = 16
  c.finetune.lora_alpha = 32.0
  c.finetune.lora_targets = "query,key,value,out,gate,fc1,fc2"
  c.finetune.frozen_dtype = "bfloat16"  # the frozen base in half the memory
  c.batch_size = 8
  c.num_train_steps = 1000
  c.eval_every_steps = 250
  c.checkpoint_every_steps = 250
  c.optimizer.lr = 2e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0

  c.sample = ml_collections.ConfigDict()
  c.sample.prompt = "Define the word harp."
  c.sample.max_new_tokens = 64
  c.sample.temperature = 0.0
  c.sample.top_k = 0

  if arg in ("full", "bible_full"):
    c.finetune.mode = "full"
    c.finetune.frozen_dtype = ""
    c.optimizer.lr = 2e-5
  if arg in ("bible", "bible_full"):  # a 4.2M-parameter model: larger steps, shorter rows
    c.init_from = "checkpoints/llama_bible"
    c.dataset.train_file = "data/instructions/train.jsonl"
    c.dataset.eval_file = "data/instructions/validation.jsonl"
    c.dataset.seq_len = 256  # the length it was pretrained at
    c.num_train_steps = 600
    c.eval_every_steps = c.checkpoint_every_steps = 300
    c.eval_max_batches = 25
    c.optimizer.lr = 1e-3 if arg == "bible" else 3e-4
  elif arg == "tiny":
    common.make_tiny(c, steps=6)
    c.dataset.seq_len = 64
    c.eval_batch_size = 8
    c.sample.max_new_tokens = 4
  elif arg not in (None, "", "full", "bible", "bible_full"):
    raise ValueError(f"unknown variant {arg!r}; valid: full, tiny, bible, bible_full (or "
                     "none).")
  return c
