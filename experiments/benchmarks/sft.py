r"""LoRA instruction fine-tuning over a float32 or a bfloat16 frozen base, side by side.

    python -m experiments.benchmarks.sft                 # a 30M-parameter Llama, 2 CPU cores
    python -m experiments.benchmarks.sft --width=64 --depth=2 --steps=2 --rounds=1   # smoke

Builds a random Llama of the given shape with a byte-level BPE tokenizer trained on WordNet
definitions and a chat template, exports it, writes WordNet definition conversations
(attention_jax/data/instructions.py), and builds the `sft` task's training step
(configs/sft_chat.py, LoRA on every projection) twice: `finetune.frozen_dtype` "" (float32)
and "bfloat16". Reports the compiled step's argument and temporary memory (XLA's
memory_analysis) and steps/s, the two interleaved in rounds.
"""

from __future__ import annotations

import os
import tempfile

import jax
from absl import app, flags, logging

from attention_jax import models, pretrained
from attention_jax.data import chat, instructions, pipeline
from attention_jax.training.setup import setup
from configs import sft_chat
from experiments.benchmarks import harness

_WIDTH = flags.DEFINE_integer("width", 512, "Model width.")
_DEPTH = flags.DEFINE_integer("depth", 8, "Blocks.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per packed row.")
_BATCH = flags.DEFINE_integer("batch", 8, "Rows per step.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
_REMAT = flags.DEFINE_string("remat", "none", "model.remat: with a rematerialised block the "
                             "widened float32 weights are not kept for the backward pass.")
_PRECISION = flags.DEFINE_string("precision", "float32", "config.precision: 'bfloat16' computes "
                                  "in bfloat16, using bfloat16 weights as stored.")
_SCAN = flags.DEFINE_bool("scan_layers", False, "Blocks under nn.scan (the bfloat16 weights are "
                          "then widened one layer at a time).")

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def make_base(directory: str, conversations) -> None:
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  tokenizer = Tokenizer(tok_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  texts = (m["content"] for c in conversations for m in c)
  tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=4096, special_tokens=["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  chat_tokenizer = pretrained.ChatTokenizer(tokenizer, {"eos_token": "<|end|>"}, TEMPLATE)
  width = _WIDTH.value
  model = models.Llama(models.LlamaConfig(
      vocab_size=4096, max_len=_SEQ_LEN.value + 1, width=width, depth=_DEPTH.value,
      num_heads=max(width // 64, 1), num_kv_heads=max(width // 256, 1), mlp_dim=width * 11 // 4))
  params = jax.jit(lambda: model.init(jax.random.key(0), *model.example_inputs())["params"])()
  pretrained.export(model, params, directory, chat_tokenizer)


def build(root: str, frozen_dtype: str):
  config = sft_chat.get_config()
  config.init_from = os.path.join(root, "base")
  config.dataset.train_file = os.path.join(root, "train.jsonl")
  config.dataset.eval_file = os.path.join(root, "validation.jsonl")
  config.dataset.seq_len = _SEQ_LEN.value
  config.batch_size = _BATCH.value
  config.num_devices = 1
  config.finetune.frozen_dtype = frozen_dtype
  config.model.scan_layers = _SCAN.value
  config.model.remat = _REMAT.value
  config.precision = _PRECISION.value
  built = setup(config)
  step = built.train_step
  memory = step.memory_analysis() if hasattr(step, "memory_analysis") else None
  batches = pipeline.train_iterator(built.train_data, config.batch_size, config.seed)
  return built, step, memory, batches


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as root:
    train_set = instructions.build("define", "train")[:20_000]
    chat.write_conversations(os.path.join(root, "train.jsonl"), train_set)
    chat.write_conversations(os.path.join(root, "validation.jsonl"),
                             instructions.build("define", "validation"))
    make_base(os.path.join(root, "base"), train_set)
    runs = {}
    for dtype in ("", "bfloat16"):
      built, step, memory, batches = build(root, dtype)
      runs[dtype or "float32"] = dict(built=built, step=step, memory=memory, batches=batches,
                                      state=built.runner.init())
    rng = jax.random.key(1)

    def steps(run):
      for _ in range(_STEPS.value):
        batch = run["built"].runner.shard_batch(next(run["batches"]))
        run["state"], metrics = run["step"](run["state"], batch, rng)
      jax.block_until_ready(metrics)

    rates = harness.interleaved(  # the warm-up round compiles
        {name: lambda run=run: _STEPS.value / harness.timed(lambda: steps(run))
         for name, run in runs.items()}, _ROUNDS.value)
    count = sum(x.size for x in jax.tree.leaves(runs["float32"]["state"].frozen))
    trained = sum(x.size for x in jax.tree.leaves(runs["float32"]["state"].params))
    print(f"LoRA SFT, Llama width {_WIDTH.value} depth {_DEPTH.value}"
          f"{' (scan_layers)' if _SCAN.value else ''}, remat={_REMAT.value}, "
          f"{_PRECISION.value} compute: {count:,} frozen and {trained:,} trained "
          f"parameters; batch {_BATCH.value} x {_SEQ_LEN.value} tokens; "
          f"{jax.devices()[0].device_kind}")
    print("| frozen base | arguments (MiB) | temporaries (MiB) | steps/s |")
    print("|---|---|---|---|")
    for name, run in runs.items():
      memory = run["memory"]
      print(f"| {name} | {memory.argument_size_in_bytes / 2 ** 20:.1f} | "
            f"{memory.temp_size_in_bytes / 2 ** 20:.1f} | {harness.median(rates[name]):.3f} |")


if __name__ == "__main__":
  app.run(main)
