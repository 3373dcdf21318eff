"""A pretrained checkpoint's own tokenizer (`tokenizer.json`, else `vocab.txt`), read with the
`tokenizers` library, with Hugging Face's padding and truncation."""

from __future__ import annotations

import os
import sys

import numpy as np

from attention_jax.pretrained import safetensors_io
from attention_jax.pretrained.json_file import JsonObject


def tokenizer_from_file(path: str):
  """The `tokenizers.Tokenizer` in a tokenizer.json (a regular file), or a ValueError naming
  the file when the library cannot read it."""
  from tokenizers import Tokenizer
  safetensors_io.check_regular(path)
  try:
    return Tokenizer.from_file(path)
  except Exception as e:  # the Rust library raises a bare Exception
    raise ValueError(f"{path} is not a tokenizer.json the tokenizers library can read: "
                     f"{str(e)[:200]}") from None


def _lowercase(directory: str) -> bool:
  """`do_lower_case` of the checkpoint's tokenizer_config.json (uncased if it has none)."""
  path = os.path.join(directory, "tokenizer_config.json")
  if not os.path.lexists(path):
    return True
  return JsonObject.read(path).boolean("do_lower_case", True)


class PretrainedTokenizer:
  """texts -> {"input_ids", "attention_mask", "token_type_ids"}, int32 [n, length].

  Each text becomes [CLS] wordpieces [SEP] (the checkpoint's post-processor), truncated to
  `max_length` tokens including the special ones, and the batch is padded with [PAD] to its
  longest row. `encode` and `decode` are one text's (data.tokenizers.Tokenizer).
  """
  stop_ids = ()  # an encoder: nothing is generated
  chat_template = None

  def __init__(self, tokenizer, max_length: int):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self._tokenizer = tokenizer  # the `tokenizers.Tokenizer`
    self.max_length = max_length
    self.vocab_size = tokenizer.get_vocab_size()
    self.pad_id = tokenizer.token_to_id("[PAD]")
    if self.pad_id is None:
      raise ValueError("the tokenizer has no [PAD] token; only BERT-style WordPiece "
                       "tokenizers are supported.")
    roles = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
             "sep_token": "[SEP]", "mask_token": "[MASK]"}
    self.special_tokens = {role: tokenizer.token_to_id(text) for role, text in roles.items()
                           if tokenizer.token_to_id(text) is not None}

  @classmethod
  def from_directory(cls, directory: str, max_length: int) -> "PretrainedTokenizer | None":
    """The tokenizer in a checkpoint directory, or None if it has neither file."""
    from tokenizers.implementations import BertWordPieceTokenizer
    json_path = os.path.join(directory, "tokenizer.json")
    vocab_path = os.path.join(directory, "vocab.txt")
    if os.path.lexists(json_path):
      tokenizer = tokenizer_from_file(json_path)
    elif os.path.lexists(vocab_path):
      safetensors_io.check_regular(vocab_path)
      tokenizer = BertWordPieceTokenizer(vocab_path, lowercase=_lowercase(directory))._tokenizer
    else:
      return None
    if tokenizer.token_to_id("[PAD]") is None:
      print(f"{directory}: its tokenizer is not a BERT-style WordPiece (no [PAD]); loading "
            "the weights without it", file=sys.stderr)
      return None
    return cls(tokenizer, max_length)

  def __call__(self, texts, max_length: int | None = None) -> dict:
    if isinstance(texts, str):
      texts = [texts]
    limit = max_length or self.max_length
    if limit < 2:
      raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {limit}.")
    self._tokenizer.enable_truncation(limit)
    try:
      encodings = self._tokenizer.encode_batch(list(texts))
    finally:
      self._tokenizer.no_truncation()
    length = max([len(e.ids) for e in encodings] + [1])
    out = {name: np.zeros((len(encodings), length), np.int32)
           for name in ("input_ids", "attention_mask", "token_type_ids")}
    out["input_ids"][:] = self.pad_id
    for row, e in enumerate(encodings):
      n = len(e.ids)
      out["input_ids"][row, :n] = e.ids
      out["attention_mask"][row, :n] = 1
      out["token_type_ids"][row, :n] = e.type_ids
    return out

  def encode(self, text: str) -> list[int]:
    """[CLS] wordpieces [SEP] of one text, untruncated."""
    return self._tokenizer.encode(text).ids

  def decode(self, ids) -> str:
    return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)])

  def to_hf(self):
    from tokenizers import Tokenizer
    return Tokenizer.from_str(self._tokenizer.to_str())
