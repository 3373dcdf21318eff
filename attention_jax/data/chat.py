"""Instruction data: conversations from JSONL, and packing them into training rows.

A JSONL line is {"messages": [{"role", "content"}, ...]} or {"prompt": ..., "response": ...}
(with an optional "system"), the two layouts instruction datasets ship in.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import numpy as np

ROLES = ("system", "user", "assistant")
# Tokens past the limit a cut conversation must reach before its tokens up to the limit are
# taken: the text's cut end changes only the last few.
_CUT_MARGIN = 32


def _text(record: dict, field: str, where: str) -> str:
  if not isinstance(record[field], str):
    raise ValueError(f"{where}: {field!r} must be a string, got {type(record[field]).__name__}.")
  return record[field]


def _conversation(record: dict, where: str) -> list[dict]:
  if "messages" in record:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
      raise ValueError(f"{where}: 'messages' must be a non-empty list.")
    for message in messages:
      if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
          message.get("content"), str):
        raise ValueError(f"{where}: each message needs a role in {ROLES} and string "
                         f"content, got {str(message)[:200]}.")
    if not any(m["role"] == "assistant" for m in messages):
      raise ValueError(f"{where}: the conversation has no assistant turn to train on.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
  if "prompt" in record and "response" in record:
    system = ([{"role": "system", "content": _text(record, "system", where)}]
              if record.get("system") is not None and record["system"] != "" else [])
    return system + [{"role": "user", "content": _text(record, "prompt", where)},
                     {"role": "assistant", "content": _text(record, "response", where)}]
  raise ValueError(f"{where}: a line needs 'messages', or 'prompt' and 'response'; it has "
                   f"{sorted(record)[:20]}.")


def _records(path: str) -> Iterator[tuple[str, dict]]:
  """("file:line", JSON object) of each non-blank line; a line that is not UTF-8, not JSON
  or not an object is an error naming the file and line."""
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      where = f"{path}:{number}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 (byte {e.start} of the line).") from None
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not JSON: {e.msg}.") from None
      except RecursionError:
        raise ValueError(f"{where} nests JSON too deeply.") from None
      if not isinstance(record, dict):
        raise ValueError(f"{where} holds a JSON {type(record).__name__}; each line is an "
                         'object such as {"messages": [...]} or {"prompt": ..., '
                         '"response": ...}.')
      yield where, record


def conversation_lines(path: str) -> list[tuple[str, list[dict]]]:
  """("file:line", conversation) of each line of a JSONL file, each conversation a list of
  {"role", "content"} messages; a bad line is an error naming the file and line."""
  lines = [(where, _conversation(record, where)) for where, record in _records(path)]
  if not lines:
    raise ValueError(f"{path} holds no conversations.")
  return lines


def read_conversations(path: str) -> list[list[dict]]:
  """The conversations of a JSONL file (`conversation_lines` without the places)."""
  return [messages for _, messages in conversation_lines(path)]


def read_tasks(path: str) -> list[str]:
  """Each line's optional "task" tag ("" where it has none), in the order of
  `read_conversations`: which scorer an evaluation applies to the reply."""
  tasks = []
  for where, record in _records(path):
    task = record.get("task", "")
    if not isinstance(task, str):
      raise ValueError(f"{where}: 'task' must be a string, got {type(task).__name__}.")
    tasks.append(task)
  return tasks


def _cut(messages: list[dict], characters: int) -> tuple[list[dict], bool]:
  """The conversation's first `characters` characters of content (later messages dropped,
  the one crossing the limit cut), and whether anything was cut."""
  kept = []
  for message in messages:
    if characters <= 0:
      return kept, True
    content = message["content"]
    kept.append({**message, "content": content[:characters]})
    characters -= len(content)
  return kept, characters < 0


def encode_truncated(tokenizer, messages: list[dict], max_tokens: int
                     ) -> tuple[list[int], list[int]]:
  """`tokenizer.encode_chat_with_mask(messages)` cut to at most `max_tokens` + 1 tokens (one
  past the limit says it was cut), found without encoding all of a long conversation: its
  contents are cut to a character budget, grown until their tokens pass the limit with
  room to spare (so the tokens kept do not depend on where the text was cut)."""
  budget = 4 * max_tokens + 256
  while True:
    kept, was_cut = _cut(messages, budget)
    ids, mask = tokenizer.encode_chat_with_mask(kept)
    if not was_cut or len(ids) > max_tokens + _CUT_MARGIN:
      return ids[:max_tokens + 1], mask[:max_tokens + 1]
    budget *= 4


def encode_each(encode, conversations: list, places: list[str] | None = None) -> list:
  """`encode` of each conversation; one its chat template refuses (a ValueError such as
  pretrained.ChatTemplateError) is an error naming its place ("file:line") when given."""
  encoded = []
  for conversation, where in zip(conversations, places or [None] * len(conversations),
                                 strict=True):
    try:
      encoded.append(encode(conversation))
    except ValueError as e:
      if where is None:
        raise
      raise ValueError(f"{where}: {e}") from None
  return encoded


def encode_conversations(path: str, tokenizer, max_tokens: int
                         ) -> list[tuple[list[int], list[int]]]:
  """(ids, assistant mask) of each conversation of a JSONL file (`encode_truncated`); a line
  the chat template refuses is an error naming the file and line."""
  places, conversations = zip(*conversation_lines(path))
  return encode_each(lambda c: encode_truncated(tokenizer, c, max_tokens), list(conversations),
                     list(places))


def write_conversations(path: str, conversations: list[list[dict]],
                        tasks: list[str] | None = None):
  """JSONL lines {"messages": ...}, with {"task": ...} first when `tasks` are given."""
  tasks = tasks or [None] * len(conversations)
  with open(path, "w") as f:
    for task, messages in zip(tasks, conversations, strict=True):
      record = {"task": task, "messages": messages} if task else {"messages": messages}
      f.write(json.dumps(record, ensure_ascii=False) + "\n")


def pack_conversations(encoded: list[tuple[list[int], list[int]]], seq_len: int
                       ) -> dict[str, np.ndarray]:
  """Packs (ids, loss mask) conversations whole into rows of seq_len + 1 tokens, first fit
  in order; a conversation longer than a row is cut to it (counted on stderr).

  Returns:
    {"tokens", "loss_mask" (1 on assistant tokens), "segment_ids" (1, 2, ... per
    conversation; 0 = padding), "positions" (from 0 in each conversation)}, int32
    [rows, seq_len + 1].
  """
  width = seq_len + 1
  rows: list[dict[str, list[int]]] = []
  space: list[int] = []  # free tokens per row
  cut = 0
  for ids, mask in encoded:
    if len(ids) > width:
      ids, mask, cut = ids[:width], mask[:width], cut + 1
    index = next((i for i, free in enumerate(space) if free >= len(ids)), None)
    if index is None:
      rows.append({"tokens": [], "loss_mask": [], "segment_ids": [], "positions": []})
      space.append(width)
      index = len(rows) - 1
    row = rows[index]
    segment = (row["segment_ids"][-1] if row["segment_ids"] else 0) + 1
    row["tokens"] += list(ids)
    row["loss_mask"] += list(mask)
    row["segment_ids"] += [segment] * len(ids)
    row["positions"] += list(range(len(ids)))
    space[index] -= len(ids)
  if cut:
    print(f"{cut} of {len(encoded)} conversations were longer than {width} tokens and were "
          "cut; raise dataset.seq_len to keep them whole", file=sys.stderr)
  return {k: np.stack([np.asarray(r[k] + [0] * (width - len(r[k])), np.int32) for r in rows])
          for k in ("tokens", "loss_mask", "segment_ids", "positions")}
