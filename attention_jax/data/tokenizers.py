"""Tokenizers: the one `Tokenizer` protocol every tokenizer here follows, ours (bytes;
WordPiece for text classification and a joint BPE for translation, trained on the training
split with the `tokenizers` library) and a checkpoint's (`pretrained.PretrainedTokenizer`,
`pretrained.ChatTokenizer`); and their persistence in a workdir, so that resuming, evaluation
and generation use the very same vocabulary."""

from __future__ import annotations

import json
import os
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from attention_jax.pretrained import ChatTokenizer, WhisperTokenizer

TOKENIZER_FILE = "tokenizer.json"  # in a workdir: bytes, WordPiece or BPE (`to_json`)
CHAT_TOKENIZER_DIR = "chat_tokenizer"  # in a workdir: a chat tokenizer's Hugging Face files
WHISPER_TOKENIZER_DIR = "whisper_tokenizer"  # in a workdir: a Whisper tokenizer's files
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# A causal LM's reserved tokens: end of document, and ChatML's turn delimiters (SmolLM2,
# Qwen2), so a model pretrained from scratch can be instruction-tuned without a new vocabulary.
CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


@runtime_checkable
class Tokenizer(Protocol):
  """What every tokenizer is, so that no caller asks which one it holds.

  vocab_size: every id is below it.
  encode(text): the ids of one text, with what the tokenizer's post-processor adds (a
    pretrained BERT's [CLS] ... [SEP], Llama's BOS); ours add nothing.
  decode(ids): the text of `ids`, special tokens left out.
  stop_ids: the ids that end a generation (EOS, Llama 3's <|eot_id|>); () where none does.
  special_tokens: {Hugging Face role ("bos_token", "eos_token", "pad_token", "unk_token",
    "cls_token", "sep_token", "mask_token"): id}, for the roles the vocabulary has.
  chat_template: the Jinja chat template, or None; where set, the tokenizer is a
    `pretrained.ChatTokenizer` and renders conversations (`encode_chat`, ...).
  to_hf(): a copy of the Hugging Face `tokenizers.Tokenizer` (to save or inspect), or None
    where there is none (bytes).
  """
  vocab_size: int
  stop_ids: tuple[int, ...]
  special_tokens: dict[str, int]
  chat_template: str | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids) -> str: ...

  def to_hf(self): ...


class ByteTokenizer:
  """UTF-8 bytes as tokens (vocabulary 256): nothing to train, nothing unknown."""
  vocab_size = 256
  stop_ids = ()
  special_tokens = {}
  chat_template = None

  def encode(self, text: str) -> list[int]:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32).tolist()

  def decode(self, tokens) -> str:
    return bytes(int(t) for t in np.asarray(tokens).reshape(-1) if 0 <= t < 256).decode(
        "utf-8", errors="replace")

  def to_hf(self) -> None:
    return None

  def to_json(self) -> dict:
    return {"type": "bytes"}


class SubwordTokenizer:
  """A `tokenizers` model: uncased WordPiece (BERT style) or cased BPE with SentencePiece-style
  word boundaries (translation). Special tokens first: [PAD]=0, [UNK], [CLS]/[BOS], [SEP]/[EOS].
  """
  chat_template = None

  def __init__(self, tokenizer, kind: str):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self._tokenizer, self.kind = tokenizer, kind
    self.vocab_size = tokenizer.get_vocab_size()
    self.pad_id = tokenizer.token_to_id("[PAD]")
    self.bos_id = tokenizer.token_to_id("[CLS]")  # begins a sequence
    self.eos_id = tokenizer.token_to_id("[SEP]")  # ends one
    self.stop_ids = (self.eos_id,)
    roles = zip(("pad_token", "unk_token", "bos_token", "eos_token", "mask_token"),
                SPECIAL_TOKENS)
    self.special_tokens = {role: tokenizer.token_to_id(text) for role, text in roles
                           if tokenizer.token_to_id(text) is not None}

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
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_padded(self, text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [length], mask int32 [length]) for [CLS] text [SEP], truncated/padded."""
    return pad([self.bos_id] + self.encode(text)[:length - 2] + [self.eos_id], length,
               self.pad_id)

  def decode(self, tokens) -> str:
    """Text of `tokens`, stopping at the first end-of-sequence token."""
    ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._tokenizer.decode(ids)

  def to_hf(self):
    from tokenizers import Tokenizer
    return Tokenizer.from_str(self._tokenizer.to_str())

  def to_json(self) -> dict:
    return {"type": self.kind, "tokenizer": json.loads(self._tokenizer.to_str())}


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


def train_whisper_tokenizer(texts, vocab_size: int, languages=("en",)) -> WhisperTokenizer:
  """A Whisper tokenizer for a speech model trained from scratch: a byte-level BPE of
  `vocab_size` tokens trained on `texts`, then Whisper's special tokens in Whisper's order
  (<|endoftext|>, <|startoftranscript|>, a token per language, <|translate|>,
  <|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>, <|notimestamps|>) and its
  1,501 timestamps <|0.00|> ... <|30.00|>: the layout Whisper's checkpoints have, so
  decoding, export and transformers treat it as theirs."""
  tokenizer = train_byte_level_bpe(texts, vocab_size, special_tokens=())
  specials = (["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{lang}|>" for lang in languages]
              + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                 "<|nospeech|>", "<|notimestamps|>"]
              + [f"<|{0.02 * i:.2f}|>" for i in range(1501)])
  tokenizer.add_special_tokens(specials)
  return WhisperTokenizer(tokenizer)


def pad(ids: list[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids int32 [length], mask int32 [length]): `ids` truncated or padded to `length`."""
  ids = ids[:length]
  out = np.full(length, pad_id, np.int32)
  out[:len(ids)] = ids
  mask = np.zeros(length, np.int32)
  mask[:len(ids)] = 1
  return out, mask


def saved_in(workdir: str | None) -> str | None:
  """Which tokenizer a workdir holds: "chat" (CHAT_TOKENIZER_DIR), "whisper"
  (WHISPER_TOKENIZER_DIR), "ours" (TOKENIZER_FILE) or None."""
  if not workdir:
    return None
  for kind, directory in (("chat", CHAT_TOKENIZER_DIR), ("whisper", WHISPER_TOKENIZER_DIR)):
    if os.path.exists(os.path.join(workdir, directory, "tokenizer.json")):
      return kind
  return "ours" if os.path.exists(os.path.join(workdir, TOKENIZER_FILE)) else None


def save(tokenizer: Tokenizer, workdir: str):
  """Writes `tokenizer` into a workdir: a ChatTokenizer or WhisperTokenizer as Hugging Face
  files in CHAT_TOKENIZER_DIR (tokenizer.json, tokenizer_config.json with the template) or
  WHISPER_TOKENIZER_DIR (tokenizer.json, generation_config.json), ours as TOKENIZER_FILE."""
  if isinstance(tokenizer, ChatTokenizer):
    tokenizer.save(os.path.join(workdir, CHAT_TOKENIZER_DIR))
    return
  if isinstance(tokenizer, WhisperTokenizer):
    tokenizer.save(os.path.join(workdir, WHISPER_TOKENIZER_DIR))
    return
  with open(os.path.join(workdir, TOKENIZER_FILE), "w") as f:
    json.dump(tokenizer.to_json(), f)


def load(workdir: str) -> Tokenizer:
  """The tokenizer a training run saved in `workdir`."""
  kind = saved_in(workdir)
  if kind == "chat":
    return ChatTokenizer.from_directory(os.path.join(workdir, CHAT_TOKENIZER_DIR))
  if kind == "whisper":
    return WhisperTokenizer.from_directory(os.path.join(workdir, WHISPER_TOKENIZER_DIR))
  path = os.path.join(workdir, TOKENIZER_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {TOKENIZER_FILE} in {workdir}: is it a training workdir?")
  with open(path) as f:
    spec = json.load(f)
  if spec["type"] == "bytes":
    return ByteTokenizer()
  if spec["type"] in ("wordpiece", "bpe"):
    from tokenizers import Tokenizer as HfTokenizer
    return SubwordTokenizer(HfTokenizer.from_str(json.dumps(spec["tokenizer"])), spec["type"])
  raise ValueError(f"unknown tokenizer type {spec['type']!r} in {path}.")


def load_or_make(workdir: str | None, make, base_tokenizer: Tokenizer | None = None
                 ) -> Tokenizer:
  """The workdir's saved tokenizer (a resumed run must not re-train it), else `base_tokenizer`
  (config.init_from's: its parameters were trained with it), else `make()` (deterministic:
  every host builds the same one); saved in `workdir` when new, by the first process."""
  if saved_in(workdir):
    return load(workdir)
  tokenizer = base_tokenizer if base_tokenizer is not None else make()
  if workdir and jax.process_index() == 0:
    save(tokenizer, workdir)
  return tokenizer
