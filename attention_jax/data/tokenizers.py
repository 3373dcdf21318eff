"""Tokenizers, saved with a workdir so evaluation and generation decode the same way."""

from __future__ import annotations

import json
import os

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
  """UTF-8 bytes as tokens (vocabulary 256): nothing to train, nothing unknown."""
  vocab_size = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def decode(self, tokens) -> str:
    return bytes(int(t) for t in np.asarray(tokens).reshape(-1) if 0 <= t < 256).decode(
        "utf-8", errors="replace")

  def to_json(self) -> dict:
    return {"type": "bytes"}


def save(tokenizer, workdir: str):
  with open(os.path.join(workdir, TOKENIZER_FILE), "w") as f:
    json.dump(tokenizer.to_json(), f)


def load(workdir: str):
  """The tokenizer a training run saved in `workdir`."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {TOKENIZER_FILE} in {workdir}: is it a training workdir?")
  with open(path) as f:
    spec = json.load(f)
  if spec["type"] == "bytes":
    return ByteTokenizer()
  raise ValueError(f"unknown tokenizer type {spec['type']!r} in {path}.")
