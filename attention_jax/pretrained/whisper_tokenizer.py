"""Whisper's tokenizer: a byte-level BPE (a checkpoint's tokenizer.json) whose special tokens
say what to decode: <|startoftranscript|>, a language (<|en|>, ...), the task (<|transcribe|>
or <|translate|>), <|notimestamps|> (or timestamps <|0.00|> ... <|30.00|>, 0.02 s apart,
after it in the vocabulary); <|endoftext|> ends a transcript. The decoding rules Whisper's
checkpoints ship in generation_config.json (tokens never to emit, and those not to begin
with) and the alignment heads (word timestamps) come with it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from attention_jax.pretrained.json_file import JsonObject
from attention_jax.pretrained.tokenizer import tokenizer_from_file

END, START, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS = (
    "<|endoftext|>", "<|startoftranscript|>", "<|transcribe|>", "<|translate|>",
    "<|notimestamps|>")
TASKS = {"transcribe": TRANSCRIBE, "translate": TRANSLATE}
NO_SPEECH = ("<|nospeech|>", "<|nocaptions|>")


class WhisperTokenizer:
  """The Tokenizer protocol (data.tokenizers.Tokenizer) over Whisper's vocabulary, with
  `prompt(language, task)` for the decoder's forced start and the checkpoint's
  `suppress_tokens` / `begin_suppress_tokens`."""
  chat_template = None

  def __init__(self, tokenizer, suppress_tokens=(), begin_suppress_tokens=None,
               alignment_heads=None):
    self._tokenizer = tokenizer  # the `tokenizers.Tokenizer`
    self.vocab_size = tokenizer.get_vocab_size()
    ids = {name: tokenizer.token_to_id(name)
           for name in (END, START, TRANSCRIBE, TRANSLATE, NO_TIMESTAMPS)}
    missing = [name for name, i in ids.items() if i is None]
    if missing:
      raise ValueError(f"not a Whisper tokenizer: it has no {', '.join(missing)}.")
    self.end_id, self.start_id = ids[END], ids[START]
    self.task_ids = {task: ids[token] for task, token in TASKS.items()}
    self.no_timestamps_id = ids[NO_TIMESTAMPS]
    self.timestamp_begin = self.no_timestamps_id + 1  # <|0.00|>, as Whisper's vocabularies
    # "no speech here": <|nospeech|> (<|nocaptions|> in the first vocabularies), if any
    self.no_speech_id = next((i for i in map(tokenizer.token_to_id, NO_SPEECH) if i is not None),
                             None)
    self.stop_ids = (self.end_id,)
    self.special_tokens = {"bos_token": self.end_id, "eos_token": self.end_id,
                           "pad_token": self.end_id, "unk_token": self.end_id}
    self.suppress_tokens = tuple(suppress_tokens)
    if begin_suppress_tokens is None:  # Whisper's: a blank, or the end, first
      blank = self.encode(" ")
      begin_suppress_tokens = tuple(blank[:1]) + (self.end_id,)
    self.begin_suppress_tokens = tuple(begin_suppress_tokens)
    # (decoder layer, head) pairs whose cross-attention follows the speech (word timestamps);
    # None: models.whisper_alignment's default
    self.alignment_heads = (None if alignment_heads is None
                            else tuple(tuple(pair) for pair in alignment_heads))

  @classmethod
  def from_directory(cls, directory: str) -> "WhisperTokenizer | None":
    """The checkpoint's tokenizer (tokenizer.json) with generation_config.json's rules, or
    None without a tokenizer.json."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.lexists(path):
      return None
    rules = {}
    generation = os.path.join(directory, "generation_config.json")
    if os.path.lexists(generation):
      config = JsonObject.read(generation)
      for field in ("suppress_tokens", "begin_suppress_tokens"):
        if field in config:
          values = config[field]
          if not isinstance(values, list) or not all(
              isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{generation}: {field} must be a list of token ids, got "
                             f"{str(values)[:80]}.")
          rules[field] = tuple(values)
      if "alignment_heads" in config:
        heads = config["alignment_heads"]
        if not isinstance(heads, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)
            for p in heads):
          raise ValueError(f"{generation}: alignment_heads must be a list of [layer, head] "
                           f"pairs, got {str(heads)[:80]}.")
        rules["alignment_heads"] = heads
    return cls(tokenizer_from_file(path), **rules)

  def save(self, directory: str):
    """Writes tokenizer.json and generation_config.json: what `from_directory` reads."""
    os.makedirs(directory, exist_ok=True)
    self._tokenizer.save(os.path.join(directory, "tokenizer.json"))
    self.save_config(directory)

  def save_config(self, directory: str):
    """Writes generation_config.json: the decoding rules, as transformers reads them."""
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
      json.dump(self.generation_config(), f, indent=2)

  def generation_config(self) -> dict:
    """generation_config.json's decoding rules, as transformers reads them."""
    config = {"suppress_tokens": list(self.suppress_tokens),
              "begin_suppress_tokens": list(self.begin_suppress_tokens),
              "decoder_start_token_id": self.start_id, "eos_token_id": self.end_id,
              "pad_token_id": self.end_id}
    if self.alignment_heads is not None:
      config["alignment_heads"] = [list(pair) for pair in self.alignment_heads]
    return config

  def language_id(self, language: str) -> int:
    token = self._tokenizer.token_to_id(f"<|{language}|>")
    if token is None:
      raise ValueError(f"this Whisper tokenizer has no language {language!r} (<|{language}|>).")
    return token

  def prompt(self, language: str | None = "en", task: str = "transcribe",
             timestamps: bool = False) -> list[int]:
    """<|startoftranscript|> [<|language|>] <|task|> [<|notimestamps|>]: the decoder's
    forced start (an English-only model takes no language: language=None)."""
    if task not in TASKS:
      raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}.")
    ids = [self.start_id] + ([self.language_id(language)] if language else [])
    return ids + [self.task_ids[task]] + ([] if timestamps else [self.no_timestamps_id])

  def encode(self, text: str) -> list[int]:
    """The text's tokens alone (no special tokens)."""
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids) -> str:
    """The text of `ids`: special tokens and timestamps left out."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    return self._tokenizer.decode([i for i in ids if i < self.end_id], skip_special_tokens=True)

  def to_hf(self):
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    return Tokenizer.from_str(self._tokenizer.to_str())
