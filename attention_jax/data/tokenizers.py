"""Tokenizers, saved with a workdir so that resuming, evaluation and generation use the very
same vocabulary: bytes or a byte-level BPE for the language models; WordPiece (text
classification) or a joint BPE (translation) vocabulary trained on the training split with the
`tokenizers` library."""

from __future__ import annotations

import json
import os

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# A causal LM's reserved tokens: end of document, and ChatML's turn delimiters (SmolLM2,
# Qwen2), so a model pretrained from scratch can be instruction-tuned without a new vocabulary.
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


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


class SubwordTokenizer:
  """A `tokenizers` model: uncased WordPiece (BERT style) or cased BPE with SentencePiece-style
  word boundaries (translation). Special tokens first: [PAD]=0, [UNK], [CLS]/[BOS], [SEP]/[EOS].
  """

  def __init__(self, tokenizer, kind: str):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer, self.kind = tokenizer, kind
    self.vocab_size = tokenizer.get_vocab_size()
    self.pad_id = tokenizer.token_to_id("[PAD]")
    self.bos_id = tokenizer.token_to_id("[CLS]")  # begins a sequence
    self.eos_id = tokenizer.token_to_id("[SEP]")  # ends one

  @classmethod
  def train(cls, texts, vocab_size: int, kind: str = "wordpiece"):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    if kind == "wordpiece":
      tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
      tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
      tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
      tokenizer.decoder = decoders.WordPiece()
      trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                          special_tokens=list(SPECIAL_TOKENS),
                                          show_progress=False)
    elif kind == "bpe":
      tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
      tokenizer.normalizer = normalizers.NFKC()
      tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
      tokenizer.decoder = decoders.Metaspace()
      trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                    show_progress=False)
    else:
      raise ValueError(f"tokenizer kind must be 'wordpiece' or 'bpe', got {kind!r}.")
    tokenizer.train_from_iterator(texts, trainer)
    return cls(tokenizer, kind)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without special tokens (a pretrained tokenizer's post-processor
    would add [CLS] and [SEP]; `encode_padded` adds them itself)."""
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def encode_padded(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [length], mask int32 [length]) for [CLS] text [SEP], truncated/padded."""
    return pad([self.bos_id] + self.encode(text)[:length - 2] + [self.eos_id], length,
               self.pad_id)

  def decode(self, tokens) -> str:
    """Text of `tokens`, stopping at the first end-of-sequence token."""
    ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.tokenizer.decode(ids)

  def to_json(self) -> dict:
    return {"type": self.kind, "tokenizer": json.loads(self.tokenizer.to_str())}


def train_byte_level_bpe(texts, vocab_size: int, special_tokens=CHAT_SPECIAL_TOKENS):
  """A byte-level BPE `tokenizers.Tokenizer` (GPT-2 / Llama 3 style: the 256 bytes are in
  the vocabulary, so no text is unknown) trained on `texts`, special tokens first (ids 0,
  1, ...). Deterministic for the same texts."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  minimum = len(special_tokens) + 256
  if vocab_size < minimum:
    raise ValueError(f"a byte-level BPE needs vocab_size >= {minimum} (256 bytes and "
                     f"{len(special_tokens)} special tokens), got {vocab_size}.")
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer)
  return tokenizer


def pad(ids: list[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [length], mask int32 [length]): `ids` truncated or padded to `length`."""
  ids = ids[:length]
  out = np.full(length, pad_id, np.int32)
  out[:len(ids)] = ids
  mask = np.zeros(length, np.int32)
  mask[:len(ids)] = 1
  return out, mask


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
  if spec["type"] in ("wordpiece", "bpe"):
    from tokenizers import Tokenizer
    return SubwordTokenizer(Tokenizer.from_str(json.dumps(spec["tokenizer"])), spec["type"])
  raise ValueError(f"unknown tokenizer type {spec['type']!r} in {path}.")
