"""A causal LM checkpoint's tokenizer (byte-level BPE `tokenizer.json` with its special
tokens) and its chat template (`tokenizer_config.json` or `chat_template.jinja`), rendered
with jinja2 as transformers renders it: a sandboxed environment with trim_blocks and
lstrip_blocks, loop controls, `tojson`, `raise_exception` and `strftime_now`, and the special
tokens (`bos_token`, `eos_token`, ...) as variables.
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np

TEMPLATE_FILE = "chat_template.jinja"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
# ChatML (SmolLM2 and Qwen2 use it): the template of models we pretrain ourselves.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CHATML_SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                  "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
# What the jinja environment provides; a template that needs more is refused with its name.
RENDERED = "jinja2 with loop controls, the tojson filter, raise_exception and strftime_now"


class ChatTemplateError(ValueError):
  """A chat template that cannot be rendered here, or messages it rejects."""


def _token_text(value) -> str | None:
  """A special token in tokenizer_config.json: a string or {"content": ...}."""
  if isinstance(value, dict):
    return value.get("content")
  return value


def _read_template(directory: str, config: dict) -> str | None:
  path = os.path.join(directory, TEMPLATE_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):  # named templates: the default one
    named = {t["name"]: t["template"] for t in template}
    template = named.get("default")
  return template


def _compile(template: str):
  import jinja2
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise ChatTemplateError(f"the chat template refused the messages: {message}")

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ChatTemplateError(f"the chat template needs something attention_jax does not render "
                            f"({e.message}, line {e.lineno}); it renders {RENDERED}.") from None


def _generation_stop_ids(directory: str) -> tuple[int, ...]:
  """generation_config.json's eos_token_id (an int or a list), if the checkpoint has one."""
  path = os.path.join(directory, "generation_config.json")
  if not os.path.exists(path):
    return ()
  with open(path) as f:
    eos = json.load(f).get("eos_token_id")
  return tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))


class ChatTokenizer:
  """text <-> token ids with a checkpoint's byte-level BPE, and chat messages -> ids through
  its chat template.

  `encode(text)` adds what the tokenizer's post-processor adds (Llama: BOS); chat encodings
  do not, since the template writes its own special tokens (as transformers does).
  """

  def __init__(self, tokenizer, config: dict | None = None, template: str | None = None,
               stop_ids: tuple[int, ...] = ()):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self.tokenizer = tokenizer  # the `tokenizers.Tokenizer`
    config = config or {}
    self.vocab_size = tokenizer.get_vocab_size()
    self.special = {name: _token_text(config.get(name)) for name in SPECIAL_TOKENS}
    self.chat_template = template
    self._compiled = _compile(template) if template else None
    ids = {name: tokenizer.token_to_id(text) for name, text in self.special.items() if text}
    self.bos_id, self.eos_id = ids.get("bos_token"), ids.get("eos_token")
    self.pad_id = ids.get("pad_token", self.eos_id)
    # Where a reply ends: EOS and generation_config.json's eos_token_id (Llama 3: <|eot_id|>).
    self.stop_ids = sorted({i for i in [self.eos_id, *(stop_ids or ())] if i is not None})

  @classmethod
  def from_directory(cls, directory: str) -> "ChatTokenizer | None":
    """The tokenizer of a checkpoint directory, or None if it has no tokenizer.json."""
    from tokenizers import Tokenizer
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
      return None
    config = {}
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config_path):
      with open(config_path) as f:
        config = json.load(f)
    return cls(Tokenizer.from_file(path), config, _read_template(directory, config),
               _generation_stop_ids(directory))

  @classmethod
  def chatml(cls, tokenizer) -> "ChatTokenizer":
    """`tokenizer` (a `tokenizers.Tokenizer` holding <|endoftext|>, <|im_start|> and
    <|im_end|>) with the ChatML template; replies stop at <|im_end|> or <|endoftext|>."""
    missing = [t for t in CHATML_SPECIAL.values() if tokenizer.token_to_id(t) is None]
    if missing:
      raise ValueError(f"a ChatML tokenizer needs the special tokens {', '.join(missing)}; "
                       "train it with them reserved (data.tokenizers.CHAT_SPECIAL_TOKENS).")
    return cls(tokenizer, dict(CHATML_SPECIAL), CHATML_TEMPLATE,
               (tokenizer.token_to_id("<|endoftext|>"),))

  def save(self, directory: str):
    """Writes tokenizer.json and tokenizer_config.json (and generation_config.json with
    stop ids) to `directory`: what `from_directory` reads back."""
    os.makedirs(directory, exist_ok=True)
    self.tokenizer.save(os.path.join(directory, "tokenizer.json"))
    self.save_config(directory)

  def save_config(self, directory: str):
    """Writes tokenizer_config.json (special tokens, chat template) and, with stop ids,
    generation_config.json, as transformers reads them."""
    config = {name: text for name, text in self.special.items() if text is not None}
    config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=self.chat_template)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=2)
    if self.stop_ids:
      with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": self.stop_ids, "bos_token_id": self.bos_id}, f, indent=2)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                 skip_special_tokens=skip_special_tokens)

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The chat template applied to `messages` ([{"role", "content"}, ...])."""
    import jinja2
    if self._compiled is None:
      raise ChatTemplateError("this checkpoint's tokenizer has no chat template "
                              "(tokenizer_config.json 'chat_template' or chat_template.jinja).")
    for i, message in enumerate(messages):
      if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ChatTemplateError(f"message {i} must be a dict with 'role' and 'content', got "
                                f"{message!r}.")
    try:
      return self._compiled.render(
          messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
          documents=None, **{k: v for k, v in self.special.items() if v is not None})
    except jinja2.UndefinedError as e:
      raise ChatTemplateError(f"the chat template needs something attention_jax does not "
                              f"provide ({e.message}); it renders {RENDERED}, with messages, "
                              "add_generation_prompt and the special tokens.") from None

  def encode_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the rendered chat (special tokens come from the template only)."""
    return self.encode(self.render_chat(messages, add_generation_prompt),
                       add_special_tokens=False)

  def encode_chat_with_mask(self, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, mask): mask 1 on the tokens of assistant turns (what SFT trains on), 0 on the
    rest. Each assistant turn's tokens are found by rendering the conversation up to it with
    a generation prompt, and up to its end: what the turn adds is the assistant's."""
    ids = self.encode_chat(messages)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      start = len(self.encode_chat(messages[:i], add_generation_prompt=True))
      end = len(self.encode_chat(messages[:i + 1]))
      for t in range(start, min(end, len(ids))):
        mask[t] = 1
    return ids, mask
