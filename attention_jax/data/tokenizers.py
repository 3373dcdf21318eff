"""Tokenizers, saved with a workdir so that resuming, evaluation and generation use the very
same vocabulary: bytes for the language models, a WordPiece vocabulary (trained on the training
split with the `tokenizers` library) for text classification."""

from __future__ import annotations

import json
import os

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


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


class WordPieceTokenizer:
  """Uncased BERT-style WordPiece: [CLS] tokens [SEP], padded with [PAD] (id 0)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.vocab_size = tokenizer.get_vocab_size()
    self.pad_id, self.cls_id, self.sep_id = (tokenizer.token_to_id(t)
                                             for t in ("[PAD]", "[CLS]", "[SEP]"))

  @classmethod
  def train(cls, texts, vocab_size: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False))
    return cls(tokenizer)

  def encode_padded(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [length], mask int32 [length]) for [CLS] text [SEP], truncated/padded."""
    ids = [self.cls_id] + self.tokenizer.encode(text).ids[:length - 2] + [self.sep_id]
    out = np.full(length, self.pad_id, np.int32)
    out[:len(ids)] = ids
    mask = np.zeros(length, np.int32)
    mask[:len(ids)] = 1
    return out, mask

  def decode(self, tokens) -> str:
    return self.tokenizer.decode([int(t) for t in np.asarray(tokens).reshape(-1)])

  def to_json(self) -> dict:
    return {"type": "wordpiece", "tokenizer": json.loads(self.tokenizer.to_str())}


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
  if spec["type"] == "wordpiece":
    from tokenizers import Tokenizer
    return WordPieceTokenizer(Tokenizer.from_str(json.dumps(spec["tokenizer"])))
  raise ValueError(f"unknown tokenizer type {spec['type']!r} in {path}.")
