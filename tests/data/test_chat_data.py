"""Chat JSONL from someone else: every bad line is an error naming the file and line, a long
conversation is cut before it is encoded (to the tokens encoding it whole would keep), and
the assistant mask is found in time linear in the turns, equal to rendering every prefix (and
refused where a prefix is not how the whole conversation begins)."""

import json
import random
import time

import pytest

from attention_jax import pretrained
from attention_jax.data import chat as chat_data

CHATML = pretrained.chat.CHATML_TEMPLATE
TRIMMING = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}"
            "<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
LAST_TURN_DIFFERS = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                     "{% if not loop.last %}<|end|>{% endif %}{% endfor %}"
                     "{% if add_generation_prompt %}<|assistant|>{% endif %}")
WORDS = "the harp is a stringed instrument plucked by hand ; lyre of ancient Greece".split()


@pytest.fixture(scope="module")
def bpe():
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.train_from_iterator([" ".join(WORDS)] * 20, trainers.BpeTrainer(
      vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|user|>",
                                      "<|assistant|>", "<|system|>", "<|end|>", "<s>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tokenizer


def _chat(bpe, template):
  special = {"bos_token": "<s>", "eos_token": "<|end|>"}
  if template == CHATML:
    return pretrained.ChatTokenizer.chatml(bpe)
  return pretrained.ChatTokenizer(bpe, special, template)


def _prefix_method(tokenizer, messages):
  """The definition: each assistant turn's tokens, by rendering every prefix."""
  ids = tokenizer.encode_chat(messages)
  mask = [0] * len(ids)
  for i, message in enumerate(messages):
    if message["role"] == "assistant":
      start = len(tokenizer.encode_chat(messages[:i], add_generation_prompt=True))
      end = len(tokenizer.encode_chat(messages[:i + 1]))
      mask[start:end] = [1] * (min(end, len(ids)) - start)
  return ids, mask


def _conversation(rng, turns):
  text = lambda: " ".join(rng.choices(WORDS + ["", " ", "\n"], k=rng.randint(0, 8)))
  system = [{"role": "system", "content": text()}] if rng.random() < 0.5 else []
  return system + [{"role": role, "content": text()}
                   for _ in range(turns) for role in ("user", "assistant")]


@pytest.mark.parametrize("template", [CHATML, TRIMMING])
def test_the_linear_mask_equals_rendering_every_prefix(bpe, template):
  tokenizer = _chat(bpe, template)
  rng = random.Random(0)
  fast = 0
  for _ in range(40):
    messages = _conversation(rng, rng.randint(1, 8))
    ids, mask = tokenizer.encode_chat_with_mask(messages)
    assert (ids, mask) == _prefix_method(tokenizer, messages)
    fast += tokenizer._assistant_spans(messages, ids) is not None
  if template == CHATML:
    assert fast == 40  # contents in place: never the quadratic fallback


def test_a_template_whose_prefixes_are_not_the_conversation_is_refused(bpe):
  """Where the last message renders differently (no <|end|>), a prefix's tokens are not
  where that turn sits in the whole conversation: the mask would cover the prompt's tokens,
  so it is refused with the reason (a single reply too: its user turn loses its <|end|>)."""
  tokenizer = _chat(bpe, LAST_TURN_DIFFERS)
  messages = _conversation(random.Random(0), 2)
  assert tokenizer._assistant_spans(messages, tokenizer.encode_chat(messages)) is None
  with pytest.raises(pretrained.ChatTemplateError, match="cannot be found by rendering "
                     "prefixes. Split the conversation"):
    tokenizer.encode_chat_with_mask(messages)
  one = [{"role": "user", "content": "the harp"}, {"role": "assistant", "content": "a lyre"}]
  with pytest.raises(pretrained.ChatTemplateError, match="up to assistant turn 1"):
    tokenizer.encode_chat_with_mask(one)  # the user turn loses its <|end|> in the prefix


def test_the_mask_of_a_long_conversation_takes_linear_time(bpe):
  tokenizer = _chat(bpe, CHATML)
  rng = random.Random(1)
  seconds = {}
  for turns in (250, 1000):
    messages = _conversation(rng, turns)
    start = time.perf_counter()
    ids, mask = tokenizer.encode_chat_with_mask(messages)
    seconds[turns] = time.perf_counter() - start
    assert sum(mask) > 0 and len(ids) == len(mask)
  # 4x the turns: about 4x the time when linear, 16x when quadratic.
  assert seconds[1000] < 8 * seconds[250] + 0.5, seconds


def test_a_long_line_is_cut_before_encoding_to_what_encoding_it_whole_keeps(bpe, tmp_path):
  tokenizer = _chat(bpe, CHATML)
  rng = random.Random(2)
  long_reply = " ".join(rng.choices(WORDS, k=200_000))  # ~1.2 MB
  conversations = [[{"role": "user", "content": "harp ?"},
                    {"role": "assistant", "content": long_reply}],
                   _conversation(rng, 300), _conversation(rng, 2)]
  for messages in conversations:
    whole_ids, whole_mask = tokenizer.encode_chat_with_mask(messages)
    ids, mask = chat_data.encode_truncated(tokenizer, messages, max_tokens=129)
    assert ids == whole_ids[:130] and mask == whole_mask[:130]
  calls = []
  encode = tokenizer.encode_chat_with_mask
  tokenizer.encode_chat_with_mask = lambda m: calls.append(sum(len(x["content"]) for x in m)) \
      or encode(m)
  chat_data.encode_truncated(tokenizer, conversations[0], max_tokens=129)
  assert max(calls) < 10_000  # a sliver of the 1.2 MB reply was ever encoded
  path = tmp_path / "long.jsonl"
  chat_data.write_conversations(str(path), conversations)
  encoded = chat_data.encode_conversations(str(path), tokenizer, 129)
  packed = chat_data.pack_conversations(encoded, seq_len=128)
  assert packed["tokens"].shape[1] == 129


@pytest.mark.parametrize("line, message", [
    ("3", "holds a JSON int; each line is an object"),
    ("null", "holds a JSON NoneType"),
    ('"hello"', "holds a JSON str"),
    ("[1]", "holds a JSON list"),
    ('{"prompt": 3, "response": "x"}', "'prompt' must be a string, got int"),
    ('{"prompt": "p", "response": ["x"]}', "'response' must be a string, got list"),
    ('{"prompt": "p", "response": "x", "system": {}}', "'system' must be a string, got dict"),
    ('{"messages": [{"role": "user", "content": 1}]}', "string content"),
    ('{"messages": []}', "'messages' must be a non-empty list"),
    ('{"text": "x"}', "a line needs 'messages', or 'prompt' and 'response'"),
    ('{"prompt": "p"', "is not JSON"),
    ('[' * 100000, "is not JSON|nests JSON too deeply"),
])
def test_every_bad_line_names_the_file_and_line(tmp_path, line, message):
  path = tmp_path / "data.jsonl"
  path.write_text('{"prompt": "p", "response": "r"}\n\n' + line + "\n")
  with pytest.raises(ValueError, match=f"{path}:3[ :].*({message})"):
    chat_data.read_conversations(str(path))


def test_non_utf8_and_bad_task_tags_name_the_line(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_bytes(b'{"prompt": "p", "response": "r"}\n{"prompt": "\xff", "response": "r"}\n')
  with pytest.raises(ValueError, match=f"{path}:2 is not UTF-8"):
    chat_data.read_conversations(str(path))
  path.write_text('{"prompt": "p", "response": "r", "task": 5}\n')
  with pytest.raises(ValueError, match=f"{path}:1: 'task' must be a string"):
    chat_data.read_tasks(str(path))


def test_a_conversation_the_template_refuses_names_the_file_and_line(bpe, tmp_path):
  strict = ("{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('no system turns') }}{% endif %}{{ m['content'] }}{% endfor %}")
  tokenizer = _chat(bpe, strict)
  path = tmp_path / "data.jsonl"
  path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n"
                  + json.dumps({"prompt": "p", "response": "r", "system": "s"}) + "\n")
  with pytest.raises(ValueError,
                     match=f"{path}:2: .*refused the messages: no system turns"):
    chat_data.encode_conversations(str(path), tokenizer, 64)
