r"""Score a chat model on held-out instructions: the loss on the reference replies' tokens, and
its own greedy replies by task (chrF for definitions, BLEU and chrF for translations, accuracy
for synonyms: a reply naming at least one true synonym).

    python -m experiments.make_instructions --out=data/instructions
    python -m experiments.eval_instructions --init_from=runs/sft_lora \
        --data=data/instructions/test.jsonl --max_per_task=200

`--init_from` is a training workdir (pretraining or sft) or a Hugging Face checkpoint
directory with a chat template. Each JSONL line's "task" tag picks its scorer
(experiments.make_instructions writes them). Prints the metrics and a few replies; --metrics_out
writes them as JSON.
"""

import collections
import json
import sys
import time

from absl import app, flags, logging

from attention_jax.data import chat as chat_data
from attention_jax.training import chat_eval
from attention_jax.training import workdir as workdir_lib

_INIT_FROM = flags.DEFINE_string("init_from", None, "A training workdir or a Hugging Face "
                                 "checkpoint directory.", required=True)
_DATA = flags.DEFINE_string("data", None, "Held-out conversations (JSONL).", required=True)
_MAX_PER_TASK = flags.DEFINE_integer("max_per_task", 200, "Score the first this many "
                                     "conversations of each task (0: all).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 96, "Longest reply, in tokens.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Prompts generated together.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per packed row for the loss.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "A workdir's 'latest', 'best' or a "
                                  "step.")
_OUT = flags.DEFINE_string("metrics_out", "", "Also write the metrics here (JSON).")


def first_per_task(conversations, task_names, limit: int):
  """The first `limit` conversations of each task (all with limit 0), in file order."""
  seen = collections.Counter()
  kept = []
  for conversation, task in zip(conversations, task_names):
    seen[task] += 1
    if not limit or seen[task] <= limit:
      kept.append((conversation, task))
  return [c for c, _ in kept], [t for _, t in kept]


def run(init_from: str, data: str, *, max_per_task: int = 200, max_new_tokens: int = 96,
        batch_size: int = 32, seq_len: int = 256, checkpoint: str = "latest", out: str = "",
        stream=sys.stdout) -> dict:
  """Scores `init_from` on `data`; prints the metrics and two replies per task to `stream`
  (progress to stderr), writes them to `out` (JSON) if given, and returns them."""
  model, params, tokenizer = workdir_lib.load_decoder(init_from, checkpoint)
  if tokenizer.chat_template is None:
    raise ValueError(f"{init_from} has no chat template to render prompts with.")
  lines, task_names = first_per_task(chat_data.conversation_lines(data),
                                     chat_data.read_tasks(data), max_per_task)
  places, conversations = [w for w, _ in lines], [c for _, c in lines]
  start = time.perf_counter()
  results = chat_eval.evaluate(model, params, tokenizer, conversations, task_names,
                               max_new_tokens, batch_size, seq_len, places=places)
  results["seconds"] = time.perf_counter() - start
  print(f"{init_from} on {data} ({len(conversations)} conversations, "
        f"{results['seconds']:.0f} s):", file=stream)
  print(f"  loss {results['loss']:.4f} nats/token on {results['tokens']:,} reply tokens",
        file=stream)
  for task, scores in results["tasks"].items():
    metrics = ", ".join(f"{k} {v:.2f}" for k, v in scores.items()
                        if k not in ("count", "examples"))
    print(f"  {task} ({scores['count']}): {metrics}", file=stream)
    for example in scores["examples"][:2]:
      print(f"    > {example['prompt']}\n      reference: {example['reference']}\n"
            f"      reply:     {example['reply']}", file=stream)
  if out:
    with open(out, "w") as f:
      json.dump(results, f, indent=2, ensure_ascii=False)
    print(f"wrote {out}", file=sys.stderr)
  return results


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    run(_INIT_FROM.value, _DATA.value, max_per_task=_MAX_PER_TASK.value,
        max_new_tokens=_MAX_NEW.value, batch_size=_BATCH.value, seq_len=_SEQ_LEN.value,
        checkpoint=_CHECKPOINT.value, out=_OUT.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None


if __name__ == "__main__":
  app.run(main)
