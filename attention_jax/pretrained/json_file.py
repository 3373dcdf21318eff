"""A checkpoint's JSON files (config.json, generation_config.json, tokenizer_config.json,
sentence_bert_config.json), read as values someone else wrote: every field taken from one is
checked for its type and range, and a wrong one is a `ValueError` naming the file, the field,
the value and what was expected. JSON `null` counts as absent (transformers writes
`"head_dim": null` for "the default").
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from attention_jax.pretrained import safetensors_io

# Past this a file is not a config (a real tokenizer_config.json with added tokens is < 1 MiB).
MAX_BYTES = 16 << 20
_REQUIRED = object()


def _shown(value) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."


def _kind(value) -> str:
  return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
          list: "a list", dict: "an object", type(None): "null"}.get(type(value),
                                                                    type(value).__name__)


class JsonObject(Mapping):
  """The fields of one JSON object from `source` (a file, or a field inside one), read
  typed. As a Mapping it gives the raw values."""

  def __init__(self, values: dict, source: str):
    self._values, self.source = values, source

  @classmethod
  def read(cls, path: str) -> "JsonObject":
    """The object in the file at `path` (a regular file of at most MAX_BYTES, UTF-8 JSON)."""
    with safetensors_io.open_regular(path) as f:
      data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
      raise ValueError(f"{path} is over {MAX_BYTES >> 20} MiB: not a configuration file.")
    try:
      values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path} is not UTF-8 text (byte {e.start}).") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column "
                       f"{e.colno}.") from None
    except RecursionError:
      raise ValueError(f"{path} nests JSON too deeply to be a configuration file.") from None
    if not isinstance(values, dict):
      raise ValueError(f"{path} holds {_kind(values)}, but a configuration file holds a JSON "
                       "object ({...}).")
    return cls(values, path)

  def __getitem__(self, name):
    return self._values[name]

  def __iter__(self):
    return iter(self._values)

  def __len__(self):
    return len(self._values)

  def _present(self, name: str, default, expected: str) -> bool:
    """Whether `name` has a value (not null); absent without a default is an error."""
    if self._values.get(name) is not None:
      return True
    if default is _REQUIRED:
      raise ValueError(f"{self.source} lacks the field {name!r} ({expected}), which this "
                       "kind of checkpoint needs.")
    return False

  def _wrong(self, name: str, expected: str) -> ValueError:
    value = self._values[name]
    return ValueError(f"{self.source}: field {name!r} is {_shown(value)} ({_kind(value)}), "
                      f"expected {expected}.")

  def integer(self, name: str, default=_REQUIRED, *, minimum: int = 0) -> int:
    """A JSON integer >= minimum (true/false and 2.0 are not integers)."""
    expected = f"an integer >= {minimum}"
    if not self._present(name, default, expected):
      return default
    value = self._values[name]
    if type(value) is not int or value < minimum:
      raise self._wrong(name, expected)
    return value

  def number(self, name: str, default=_REQUIRED, *, positive: bool = False,
             at_most: float | None = None) -> float:
    """A finite JSON number (> 0 with `positive`, <= `at_most` when given)."""
    expected = ("a positive number" if positive else "a number") + (
        f" <= {at_most}" if at_most is not None else "")
    if not self._present(name, default, expected):
      return default
    value = self._values[name]
    if (type(value) not in (int, float) or not math.isfinite(value)
        or (positive and value <= 0) or (at_most is not None and value > at_most)):
      raise self._wrong(name, expected)
    return float(value)

  def boolean(self, name: str, default=_REQUIRED) -> bool:
    """JSON true or false (the string "false" is refused, not read as true)."""
    if not self._present(name, default, "true or false"):
      return default
    if type(self._values[name]) is not bool:
      raise self._wrong(name, "true or false")
    return self._values[name]

  def string(self, name: str, default=_REQUIRED) -> str:
    if not self._present(name, default, "a string"):
      return default
    if not isinstance(self._values[name], str):
      raise self._wrong(name, "a string")
    return self._values[name]

  def integers(self, name: str) -> tuple[int, ...]:
    """An integer or a list of them (generation_config.json's eos_token_id), as a tuple."""
    expected = "a token id >= 0 or a list of them"
    if not self._present(name, (), expected):
      return ()
    value = self._values[name]
    values = value if isinstance(value, list) else [value]
    if not all(type(v) is int and v >= 0 for v in values):
      raise self._wrong(name, expected)
    return tuple(values)

  def strings(self, name: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    """A list of strings each one of `allowed` (config.json's layer_types); None if absent."""
    expected = f"a list of {', '.join(map(repr, allowed))}"
    if not self._present(name, None, expected):
      return None
    value = self._values[name]
    if not isinstance(value, list) or not all(v in allowed for v in value):
      raise self._wrong(name, expected)
    return tuple(value)

  def token(self, name: str) -> str | None:
    """A special token: a string or {"content": string} (tokenizer_config.json)."""
    if not self._present(name, None, "a token"):
      return None
    value = self._values[name]
    text = value.get("content") if isinstance(value, dict) else value
    if not isinstance(text, str):
      raise self._wrong(name, 'a string or {"content": a string}')
    return text

  def object(self, name: str) -> "JsonObject":
    """A nested object (empty when absent or null)."""
    if not self._present(name, None, "an object"):
      return JsonObject({}, f"{self.source}: {name}")
    if not isinstance(self._values[name], dict):
      raise self._wrong(name, "an object")
    return JsonObject(self._values[name], f"{self.source}: {name}")
