"""A causal LM checkpoint's tokenizer (byte-level BPE `tokenizer.json` with its special
tokens) and its chat template (`tokenizer_config.json` or `chat_template.jinja`), rendered
with jinja2 as transformers renders it: a sandboxed environment with trim_blocks and
lstrip_blocks, loop controls, `tojson`, `raise_exception` and `strftime_now`, and the special
tokens (`bos_token`, `eos_token`, ...) as variables.

A template comes with someone else's checkpoint, so rendering is bounded: the sandbox refuses
escapes (SecurityError, as in transformers), the output and every string, list or number the
template builds are capped at MAX_RENDERED_CHARS, a render is stopped after RENDER_SECONDS,
and whatever goes wrong is a `ChatTemplateError` naming the template's file.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import datetime
import functools
import json
import os
import re
import threading
import time

import jinja2
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from attention_jax.pretrained import safetensors_io
from attention_jax.pretrained.json_file import JsonObject
from attention_jax.pretrained.tokenizer import tokenizer_from_file

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


# What one render may produce or build (characters, list items), and how long it may take.
MAX_RENDERED_CHARS = 16 * 2 ** 20
RENDER_SECONDS = 10.0
MAX_TEMPLATE_BYTES = 1 << 20
_MARK = "\ue000"  # a private-use character: marks a message's content in a render
_LINEAR_FROM_TURNS = 4  # assistant turns from which the linear assistant mask pays


class ChatTemplateError(ValueError):
  """A chat template that cannot be rendered here, or messages it rejects."""


class _TooLarge(Exception):
  """Something a template builds is over MAX_RENDERED_CHARS."""


class _OutOfTime(Exception):
  """Raised inside a render's thread by its watchdog after RENDER_SECONDS."""


def _size(value) -> int:
  return len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else 0


def _bounded(value):
  if _size(value) > MAX_RENDERED_CHARS:
    raise _TooLarge(f"it built a value of {_size(value):,} items")
  return value


_PRINTF_WIDTH = re.compile(r"%[#0 +\-]*(\d*)(?:\.(\d*))?")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:([^{}]*)\}")


def _check_format(text: str):
  """Refuses a format string whose widths or precisions would build an oversized string."""
  numbers = [n for match in _PRINTF_WIDTH.finditer(text) for n in match.groups() if n]
  numbers += [n for spec in _FORMAT_SPEC.findall(text) for n in re.findall(r"\d+", spec)]
  if any(int(n) > MAX_RENDERED_CHARS for n in numbers):
    raise _TooLarge("a format width is over the limit")


def _check_arguments(args, kwargs):
  """Refuses integer arguments (widths, counts) past MAX_RENDERED_CHARS."""
  for value in (*args, *kwargs.values()):
    if isinstance(value, int) and abs(value) > MAX_RENDERED_CHARS:
      raise _TooLarge(f"it passed {value} to a function")


def _bounded_filter(function):
  @functools.wraps(function)  # keeps jinja's pass_context/pass_environment marks
  def bounded(*args, **kwargs):
    _check_arguments(args[1:], kwargs)
    if function is jinja2.filters.do_format and args and isinstance(args[0], str):
      _check_format(args[0])
    return _bounded(function(*args, **kwargs))
  return bounded


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
  """transformers' sandbox with every operator, call and filter result bounded in size."""
  intercepted_binops = frozenset(["*", "**", "%", "+"])

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.filters = {name: _bounded_filter(f) for name, f in self.filters.items()}

  def call_binop(self, context, operator, left, right):
    if operator == "*":
      count = right if isinstance(right, int) else left if isinstance(left, int) else 1
      if max(_size(left), _size(right)) * abs(count) > MAX_RENDERED_CHARS:
        raise _TooLarge("a repetition is over the limit")
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
      if right > 0 and abs(left) > 1 and abs(left).bit_length() * right > 4096:
        raise _TooLarge("a power is over 4096 bits")
    elif operator == "%" and isinstance(left, str):
      _check_format(left)
      _check_arguments(right if isinstance(right, tuple) else (right,), {})
    elif operator == "+" and _size(left) + _size(right) > MAX_RENDERED_CHARS:
      raise _TooLarge("a concatenation is over the limit")
    return _bounded(super().call_binop(context, operator, left, right))

  def getattr(self, obj, attribute):
    if isinstance(obj, str) and attribute in ("format", "format_map"):
      _check_format(obj)
    return super().getattr(obj, attribute)

  def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
    _check_arguments(args, kwargs)
    return _bounded(super().call(__context, __obj, *args, **kwargs))


class _Watchdog:
  """One daemon thread that stops renders past their deadline: it raises _OutOfTime in the
  rendering thread (at its next bytecode). Registering a render costs a dict entry, not a
  thread; firing and the render's end both hold the lock, so a render that ended is never
  interrupted afterwards."""

  def __init__(self):
    self._condition = threading.Condition()
    self._deadlines: dict[object, tuple[float, int]] = {}  # token -> (deadline, thread)
    self._thread = None

  def _run(self):
    with self._condition:
      while True:
        now = time.monotonic()
        for token, (deadline, thread) in list(self._deadlines.items()):
          if deadline <= now:
            del self._deadlines[token]
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread),
                                                       ctypes.py_object(_OutOfTime))
        waits = [deadline - now for deadline, _ in self._deadlines.values()]
        self._condition.wait(max(min(waits), 0.0) if waits else None)

  @contextlib.contextmanager
  def limit(self, seconds: float):
    """Raises _OutOfTime inside the block once it has run `seconds`."""
    token, thread = object(), threading.get_ident()
    with self._condition:
      if self._thread is None:
        self._thread = threading.Thread(target=self._run, name="chat-template-watchdog",
                                        daemon=True)
        self._thread.start()
      self._deadlines[token] = (time.monotonic() + seconds, thread)
      self._condition.notify()
    try:
      yield
    finally:
      with self._condition:
        if self._deadlines.pop(token, None) is None:  # it fired: clear what may be pending
          ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)
          raise _OutOfTime()


_WATCHDOG = _Watchdog()


def _render_bounded(template, source: str, variables: dict) -> str:
  """`template` rendered with `variables`, streamed and stopped past MAX_RENDERED_CHARS or
  RENDER_SECONDS; any failure is a ChatTemplateError naming `source`."""
  try:
    with _WATCHDOG.limit(RENDER_SECONDS):
      chunks, length = [], 0
      for chunk in template.generate(**variables):
        length += len(chunk)
        if length > MAX_RENDERED_CHARS:
          raise _TooLarge(f"its output passed {MAX_RENDERED_CHARS:,} characters")
        chunks.append(chunk)
      return "".join(chunks)
  except ChatTemplateError as e:
    raise ChatTemplateError(f"{source}: {e}") from None
  except jinja2.UndefinedError as e:
    raise ChatTemplateError(f"{source}: the chat template needs something attention_jax "
                            f"does not provide ({e.message}); it renders {RENDERED}, with "
                            "messages, add_generation_prompt and the special tokens.") from None
  except _TooLarge as e:
    raise ChatTemplateError(f"{source}: the chat template was stopped: {e} (at most "
                            f"{MAX_RENDERED_CHARS:,} characters or items).") from None
  except _OutOfTime:
    raise ChatTemplateError(f"{source}: the chat template was stopped after "
                            f"{RENDER_SECONDS:g} s of rendering.") from None
  except (jinja2.TemplateError, ArithmeticError, MemoryError, RecursionError, LookupError,
          TypeError, ValueError, AttributeError) as e:
    raise ChatTemplateError(f"{source}: the chat template failed: {type(e).__name__}: "
                            f"{str(e)[:200]}") from None


def _read_template(directory: str, config: JsonObject) -> tuple[str | None, str]:
  """(template text or None, where it came from): chat_template.jinja, else
  tokenizer_config.json's chat_template (a string, or named templates: the default one)."""
  path = os.path.join(directory, TEMPLATE_FILE)
  if os.path.lexists(path):
    with safetensors_io.open_regular(path) as f:
      data = f.read(MAX_TEMPLATE_BYTES + 1)
    if len(data) > MAX_TEMPLATE_BYTES:
      raise ChatTemplateError(f"{path} is over {MAX_TEMPLATE_BYTES >> 20} MiB: not a chat "
                              "template.")
    try:
      return data.decode("utf-8"), path
    except UnicodeDecodeError as e:
      raise ChatTemplateError(f"{path} is not UTF-8 text (byte {e.start}).") from None
  source = f"{config.source}: chat_template"
  template = config.get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  if template is not None and not isinstance(template, str):
    raise ChatTemplateError(f"{source} is {type(template).__name__}, expected a string or a "
                            'list of {"name", "template"} with a "default" one.')
  if template is not None and len(template) > MAX_TEMPLATE_BYTES:
    raise ChatTemplateError(f"{source} is over {MAX_TEMPLATE_BYTES >> 20} MiB.")
  return template, source


def _compile(template: str, source: str):
  def raise_exception(message):
    raise ChatTemplateError(f"the chat template refused the messages: {message}")

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True,
                            extensions=["jinja2.ext.loopcontrols"])
  env.filters["tojson"] = _bounded_filter(tojson)
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ChatTemplateError(f"{source}: the chat template needs something attention_jax does "
                            f"not render ({e.message}, line {e.lineno}); it renders "
                            f"{RENDERED}.") from None
  except (jinja2.TemplateError, RecursionError, MemoryError) as e:
    raise ChatTemplateError(f"{source}: the chat template does not compile: "
                            f"{type(e).__name__}: {str(e)[:200]}") from None


def _generation_stop_ids(directory: str) -> tuple[int, ...]:
  """generation_config.json's eos_token_id (an int or a list), if the checkpoint has one."""
  path = os.path.join(directory, "generation_config.json")
  return JsonObject.read(path).integers("eos_token_id") if os.path.lexists(path) else ()


class ChatTokenizer:
  """text <-> token ids with a checkpoint's byte-level BPE, and chat messages -> ids through
  its chat template.

  `encode(text)` adds what the tokenizer's post-processor adds (Llama: BOS); chat encodings
  do not, since the template writes its own special tokens (as transformers does).
  """

  def __init__(self, tokenizer, config: dict | None = None, template: str | None = None,
               stop_ids: tuple[int, ...] = (), template_source: str = "the chat template"):
    tokenizer.no_padding()
    tokenizer.no_truncation()
    self._tokenizer = tokenizer  # the `tokenizers.Tokenizer`
    if not isinstance(config, JsonObject):
      config = JsonObject(config or {}, "the tokenizer config")
    self.vocab_size = tokenizer.get_vocab_size()
    self.special = {name: config.token(name) for name in SPECIAL_TOKENS}  # their texts
    self.chat_template = template
    self.template_source = template_source  # named in template errors
    self._compiled = _compile(template, template_source) if template else None
    ids = {name: tokenizer.token_to_id(text) for name, text in self.special.items() if text}
    self.special_tokens = {name: i for name, i in ids.items() if i is not None}
    self.bos_id, self.eos_id = ids.get("bos_token"), ids.get("eos_token")
    self.pad_id = ids.get("pad_token", self.eos_id)
    # Where a reply ends: EOS and generation_config.json's eos_token_id (Llama 3: <|eot_id|>).
    self.stop_ids = tuple(sorted({i for i in [self.eos_id, *(stop_ids or ())]
                                  if i is not None}))

  @classmethod
  def from_directory(cls, directory: str) -> "ChatTokenizer | None":
    """The tokenizer of a checkpoint directory, or None if it has no tokenizer.json."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.lexists(path):
      return None
    config_path = os.path.join(directory, "tokenizer_config.json")
    config = (JsonObject.read(config_path) if os.path.lexists(config_path)
              else JsonObject({}, config_path))
    template, source = _read_template(directory, config)
    return cls(tokenizer_from_file(path), config, template, _generation_stop_ids(directory),
               source)

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
    self._tokenizer.save(os.path.join(directory, "tokenizer.json"))
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
        json.dump({"eos_token_id": list(self.stop_ids), "bos_token_id": self.bos_id}, f,
                  indent=2)

  def to_hf(self):
    from tokenizers import Tokenizer
    return Tokenizer.from_str(self._tokenizer.to_str())

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    return self._tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                 skip_special_tokens=skip_special_tokens)

  def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                  **variables) -> str:
    """The chat template applied to `messages` ([{"role", "content"}, ...]), bounded in
    output and time (MAX_RENDERED_CHARS, RENDER_SECONDS). `variables` are the template's own
    switches, as transformers' `apply_chat_template(**kwargs)` passes them (Qwen3's
    `enable_thinking=False`): booleans, numbers, strings or None."""
    if self._compiled is None:
      raise ChatTemplateError("this checkpoint's tokenizer has no chat template "
                              "(tokenizer_config.json 'chat_template' or chat_template.jinja).")
    for i, message in enumerate(messages):
      if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise ChatTemplateError(f"message {i} must be a dict with 'role' and 'content', got "
                                f"{message!r}.")
    context = dict(messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
                   documents=None, **{k: v for k, v in self.special.items() if v is not None})
    for name, value in variables.items():
      if name in context or not name.isidentifier():
        raise ChatTemplateError(f"template variable {name!r} is not one a caller may set: "
                                f"{', '.join(sorted(context))} are set by attention_jax.")
      if not (value is None or isinstance(value, (bool, int, float, str))):
        raise ChatTemplateError(f"template variable {name!r} must be a boolean, number, "
                                f"string or None, got {type(value).__name__}.")
    return _render_bounded(self._compiled, self.template_source, {**context, **variables})

  def encode_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                  **variables) -> list[int]:
    """Token ids of the rendered chat (special tokens come from the template only)."""
    return self.encode(self.render_chat(messages, add_generation_prompt, **variables),
                       add_special_tokens=False)

  def encode_chat_with_mask(self, messages: list[dict], **variables
                            ) -> tuple[list[int], list[int]]:
    """(ids, mask): mask 1 on the tokens of assistant turns (what SFT trains on), 0 on the
    rest. A turn's tokens are what rendering the conversation up to its end adds to
    rendering it up to the turn with a generation prompt.

    Found in time linear in the conversation (`_assistant_spans`: one render and one
    tokenization, checked against the definition); a template that does not render each
    message in place falls back to rendering every prefix (quadratic in the turns)."""
    ids = self.encode_chat(messages, **variables)
    mask = [0] * len(ids)
    turns = sum(m["role"] == "assistant" for m in messages)
    # With few turns rendering every prefix is the cheaper way.
    spans = (self._assistant_spans(messages, ids, variables) if turns >= _LINEAR_FROM_TURNS
             else None)
    if spans is None:
      spans = self._prefix_spans(messages, variables)
    for start, end in spans:
      mask[start:min(end, len(ids))] = [1] * max(0, min(end, len(ids)) - start)
    return ids, mask

  def _prefix_spans(self, messages: list[dict], variables: dict) -> list[tuple[int, int]]:
    """Each assistant turn's span by the definition, rendering every prefix; refused when a
    prefix is not how the whole conversation begins (the turn would not be where its tokens
    are)."""
    text = self.render_chat(messages, **variables)
    length = lambda piece: len(self.encode(piece, add_special_tokens=False))
    spans = []
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      before = self.render_chat(messages[:i], add_generation_prompt=True, **variables)
      through = self.render_chat(messages[:i + 1], **variables)
      if not (text.startswith(before) and text.startswith(through)):
        raise ChatTemplateError(
            f"{self.template_source}: the chat template renders the conversation up to "
            f"assistant turn {i} differently once later turns follow it (Qwen3's drops the "
            "thinking block of all but the last reply; some templates end only the last "
            "message), so the turn's tokens cannot be found by rendering prefixes. Split the "
            "conversation into one example per assistant turn, or use a template that "
            "renders each turn in place.")
      spans.append((length(before), length(through)))
    return spans

  def _assistant_spans(self, messages: list[dict], ids: list[int],
                       variables: dict | None = None) -> list[tuple[int, int]] | None:
    """Each assistant turn's [start, end) token span, from one render of the conversation
    with each content replaced by a marker and a few renders of its first turns (what the
    template writes after a message of each role, and its generation prompt); None when the
    template does not write each message's content in place and the same text around it
    everywhere, or when the first and last turns disagree with the definition."""
    variables = variables or {}
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns or any(_MARK in m["content"] for m in messages):
      return None
    markers = [f"{_MARK}{i}{_MARK}" for i in range(len(messages))]
    skeleton = [{**m, "content": marker} for m, marker in zip(messages, markers)]
    rendered = self.render_chat(skeleton, **variables)
    places = [rendered.find(marker) for marker in markers]
    if min(places) < 0 or places != sorted(places):
      return None
    text = self.render_chat(messages, **variables)
    shift, pieces, previous = [0], [], 0  # skeleton position -> text position, per marker
    for i, place in enumerate(places):
      pieces += [rendered[previous:place], messages[i]["content"]]
      previous = place + len(markers[i])
      shift.append(shift[-1] + len(messages[i]["content"]) - len(markers[i]))
    if "".join(pieces) + rendered[previous:] != text:
      return None  # the template changes a content (strips it, splits it, ...)
    after, prompt = {}, None  # what follows a last message of each role; the prompt
    for k, message in enumerate(messages):
      if message["role"] not in after:
        alone = self.render_chat(skeleton[:k + 1], **variables)
        after[message["role"]] = alone[alone.rfind(markers[k]) + len(markers[k]):]
      if k in turns and prompt is None:
        plain = self.render_chat(skeleton[:k], **variables)
        with_prompt = self.render_chat(skeleton[:k], add_generation_prompt=True, **variables)
        if not with_prompt.startswith(plain):
          return None
        prompt = with_prompt[len(plain):]
    ends = [place + len(marker) for place, marker in zip(places, markers)]
    spans_in_text = []
    for k in turns:
      begin = ends[k - 1] + len(after[messages[k - 1]["role"]]) if k else 0
      end = ends[k] + len(after["assistant"])
      if (rendered[begin:begin + len(prompt)] != prompt
          or rendered[ends[k]:end] != after["assistant"]
          or (k and rendered[ends[k - 1]:begin] != after[messages[k - 1]["role"]])):
        return None
      spans_in_text.append((begin + len(prompt) + shift[k], end + shift[k + 1]))
    starts = [offset[0] for offset in self._tokenizer.encode(
        text, add_special_tokens=False).offsets]
    spans = []
    for a, b in spans_in_text:
      span = (bisect.bisect_left(starts, a), bisect.bisect_left(starts, b))
      if any(t < len(starts) and starts[t] != at for t, at in zip(span, (a, b))):
        return None  # a token straddles the turn's edge
      spans.append(span)
    for k, span in {turns[0]: spans[0], turns[-1]: spans[-1]}.items():
      if span != (len(self.encode_chat(messages[:k], add_generation_prompt=True,
                                       **variables)),
                  len(self.encode_chat(messages[:k + 1], **variables))):
        return None
    return spans
