r"""Writes instruction data (chat JSONL for the `sft` task) built from Debian-packaged data.

    python -m experiments.make_instructions --out=data/instructions \
        --tasks=define,synonyms,translate --max_per_task=20000

Writes {train,validation,test}.jsonl under --out, each line tagged with its task (what
`experiments.eval_instructions` scores it by): WordNet definitions ("Define the word X.")
and synonyms ("Which words mean X?"), held out by word, and KJV -> Reina-Valera translation
("Translate to Spanish: ..."), held out by verse (attention_jax/data/instructions.py). Needs
`apt-get install wordnet-base sword-text-kjv sword-text-sparv`.
"""

import os
import random

from absl import app, flags

from attention_jax.data import chat, instructions

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_TASKS = flags.DEFINE_list("tasks", list(instructions.TASKS), "Instruction tasks.")
_MAX = flags.DEFINE_integer("max_per_task", 0, "Keep at most this many training "
                            "conversations per task (0: all); held-out splits are kept whole.")
_SEED = flags.DEFINE_integer("seed", 0, "Shuffling seed of the training file.")


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  for split in ("train", "validation", "test"):
    tagged = []  # (task, conversation)
    for task in _TASKS.value:
      part = instructions.build(task, split)
      if split == "train" and _MAX.value:
        part = random.Random(_SEED.value).sample(part, min(_MAX.value, len(part)))
      tagged += [(task, conversation) for conversation in part]
      print(f"{split}: {task} {len(part):,} conversations")
    if split == "train":
      random.Random(_SEED.value).shuffle(tagged)
    chat.write_conversations(os.path.join(_OUT.value, f"{split}.jsonl"),
                             [c for _, c in tagged], [t for t, _ in tagged])


if __name__ == "__main__":
  app.run(main)
