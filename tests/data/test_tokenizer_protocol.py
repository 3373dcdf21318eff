"""Every tokenizer follows data.tokenizers.Tokenizer, so callers never ask which one they hold:
the same members with the same meaning, and the same persistence in a workdir."""

import os

import pytest

from attention_jax import pretrained
from attention_jax.data import tokenizers

TEXTS = ["in the beginning god created the heaven and the earth",
         "and the earth was without form and void"] * 20
TEXT = "the earth was void"


def _all():
  """{name: (tokenizer, the special-token texts its roles must name)}."""
  wordpiece = tokenizers.SubwordTokenizer.train(TEXTS, 120, "wordpiece")
  return {
      "bytes": (tokenizers.ByteTokenizer(), {}),
      "wordpiece": (wordpiece, {"pad_token": "[PAD]", "bos_token": "[CLS]",
                                "eos_token": "[SEP]", "unk_token": "[UNK]",
                                "mask_token": "[MASK]"}),
      "bpe": (tokenizers.SubwordTokenizer.train(TEXTS, 120, "bpe"),
              {"pad_token": "[PAD]", "eos_token": "[SEP]"}),
      "pretrained": (pretrained.PretrainedTokenizer.from_directory(
          pretrained.hub.resolve("all-MiniLM-L6-v2")[0], 16),
                     {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                      "mask_token": "[MASK]", "unk_token": "[UNK]"}),
      "chat": (pretrained.ChatTokenizer.chatml(tokenizers.train_byte_level_bpe(TEXTS, 300)),
               {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}),
      "whisper": (tokenizers.train_whisper_tokenizer(TEXTS, 300),
                  {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}),
  }


@pytest.mark.parametrize("name", ["bytes", "wordpiece", "bpe", "pretrained", "chat", "whisper"])
def test_every_tokenizer_has_the_protocol(name):
  tokenizer, roles = _all()[name]
  assert isinstance(tokenizer, tokenizers.Tokenizer)
  ids = tokenizer.encode(TEXT)
  assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
  assert 0 < len(ids) and max(ids) < tokenizer.vocab_size
  assert tokenizer.decode(ids).replace(" ", "") == TEXT.replace(" ", "")
  assert isinstance(tokenizer.stop_ids, tuple)
  assert all(0 <= i < tokenizer.vocab_size for i in tokenizer.stop_ids)
  vocabulary = tokenizer.to_hf()
  if name == "bytes":
    assert vocabulary is None and tokenizer.special_tokens == {}
  else:
    for role, text in roles.items():
      assert vocabulary.id_to_token(tokenizer.special_tokens[role]) == text
    vocabulary.add_tokens(["zzzz"])  # a copy: the tokenizer is unchanged
    assert tokenizer.to_hf().get_vocab_size() == tokenizer.vocab_size
  assert (tokenizer.chat_template is not None) == (name == "chat")
  if name == "pretrained":  # a BERT reads [CLS] text [SEP]
    assert ids[0] == tokenizer.special_tokens["cls_token"]
    assert ids[-1] == tokenizer.special_tokens["sep_token"]
  if name in ("wordpiece", "bpe"):
    assert tokenizer.stop_ids == (tokenizer.special_tokens["eos_token"],)


@pytest.mark.parametrize("name", ["bytes", "wordpiece", "bpe", "chat", "whisper"])
def test_a_workdir_keeps_its_tokenizer(name, tmp_path):
  """load_or_make: a new run makes its tokenizer and saves it, a resumed one reloads it (a base's
  or a new one is not used), and what is reloaded encodes and stops the same."""
  tokenizer, _ = _all()[name]
  made = []
  first = tokenizers.load_or_make(str(tmp_path), lambda: made.append(1) or tokenizer)
  assert first is tokenizer and made == [1]
  assert tokenizers.saved_in(str(tmp_path)) == (name if name in ("chat", "whisper") else "ours")
  again = tokenizers.load_or_make(str(tmp_path), lambda: made.append(1), _all()["bytes"][0])
  assert made == [1] and type(again) is type(tokenizer)
  assert again.encode(TEXT) == tokenizer.encode(TEXT)
  assert again.stop_ids == tokenizer.stop_ids and again.vocab_size == tokenizer.vocab_size
  assert again.chat_template == tokenizer.chat_template
  if name == "whisper":  # the layout of Whisper's vocabularies, and its decoding rules
    assert again.prompt() == tokenizer.prompt() and again.timestamp_begin == 300 + 9
    assert again.begin_suppress_tokens == tokenizer.begin_suppress_tokens


def test_a_base_tokenizer_comes_before_a_new_one(tmp_path):
  base = tokenizers.SubwordTokenizer.train(TEXTS, 120)
  got = tokenizers.load_or_make(str(tmp_path), lambda: pytest.fail("made a new one"), base)
  assert got is base and os.path.exists(tmp_path / tokenizers.TOKENIZER_FILE)
  assert tokenizers.load_or_make(None, tokenizers.ByteTokenizer).vocab_size == 256
  with pytest.raises(FileNotFoundError, match="is it a training workdir"):
    tokenizers.load(str(tmp_path / "empty"))
