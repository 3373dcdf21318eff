"""Instruction conversations built from real data in Debian packages, for instruction
fine-tuning (the `sft` task): WordNet definitions and synonyms, and KJV -> Reina-Valera
translation. Held-out splits are by word (WordNet) and by verse (the Bible), so no evaluation
word or verse is ever trained on.
"""

from __future__ import annotations

import os
import zlib

from attention_jax.data import builders, sword

TASKS = ("define", "synonyms", "translate")


def word_split(word: str) -> str:
  """A word's split, stable across runs and machines: 2% validation, 2% test."""
  return sword.split_of(zlib.crc32(word.encode()))


def wordnet_synsets(root: str = builders.WORDNET_DIR):
  """(words, gloss) of every WordNet synset: its lemmas (underscores as spaces, in WordNet's
  order) and its definition (the gloss before the first quoted example)."""
  for pos in ("noun", "verb", "adj", "adv"):
    path = os.path.join(root, f"data.{pos}")
    builders.require(path, "wordnet-base")
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("  ") or "|" not in line:
          continue  # licence header
        fields, gloss = line.split("|", 1)
        fields = fields.split()
        count = int(fields[3], 16)
        words = [w.split("(")[0].replace("_", " ") for w in fields[4:4 + 2 * count:2]]
        definition = gloss.split('"')[0].strip().rstrip(";").strip()
        if definition:
          yield words, definition


def conversation(prompt: str, response: str) -> list[dict]:
  return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def definitions(split: str) -> list[list[dict]]:
  """"Define the word X." -> its definition, for the first word of each synset (the word
  decides the split), one conversation per (word, synset)."""
  return [conversation(f"Define the word {words[0]}.", gloss)
          for words, gloss in wordnet_synsets() if word_split(words[0]) == split]


def synonyms(split: str) -> list[list[dict]]:
  """"Which words mean X?" -> the synset's other lemmas, comma-separated (synsets of two or
  more words; the asked word decides the split)."""
  return [conversation(f"Which words mean {words[0]}?", ", ".join(words[1:]))
          for words, _ in wordnet_synsets()
          if len(words) > 1 and word_split(words[0]) == split]


def translations(split: str) -> list[list[dict]]:
  """"Translate to Spanish: <KJV verse>" -> the Reina-Valera 1909 verse (the verse index
  decides the split, as in the translation dataset)."""
  pairs = [(en, es) for en, es in zip(sword.read_module("kjv"),
                                      sword.read_module("reina_valera")) if en and es]
  return [conversation(f"Translate to Spanish: {en}", es)
          for i, (en, es) in enumerate(pairs) if sword.split_of(i) == split]


def build(task: str, split: str) -> list[list[dict]]:
  """The conversations of `task` (one of TASKS) in `split` ("train", "validation", "test")."""
  makers = {"define": definitions, "synonyms": synonyms, "translate": translations}
  if task not in makers:
    raise ValueError(f"unknown instruction task {task!r}; valid: {', '.join(TASKS)}.")
  if split not in ("train", "validation", "test"):
    raise ValueError(f"split must be train, validation or test, got {split!r}.")
  return makers[task](split)
