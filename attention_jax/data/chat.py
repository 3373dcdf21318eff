"""Instruction data: conversations from JSONL, and packing them into training rows.

A JSONL line is {"messages": [{"role", "content"}, ...]} or {"prompt": ..., "response": ...}
(with an optional "system"), the two layouts instruction datasets ship in.
"""

from __future__ import annotations

import json
import sys

import numpy as np

ROLES = ("system", "user", "assistant")


def _conversation(record: dict, where: str) -> list[dict]:
  if "messages" in record:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
      raise ValueError(f"{where}: 'messages' must be a non-empty list.")
    for message in messages:
      if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
          message.get("content"), str):
        raise ValueError(f"{where}: each message needs a role in {ROLES} and string "
                         f"content, got {message!r}.")
    if not any(m["role"] == "assistant" for m in messages):
      raise ValueError(f"{where}: the conversation has no assistant turn to train on.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
  if "prompt" in record and "response" in record:
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return system + [{"role": "user", "content": record["prompt"]},
                     {"role": "assistant", "content": record["response"]}]
  raise ValueError(f"{where}: a line needs 'messages', or 'prompt' and 'response'; it has "
                   f"{sorted(record)}.")


def read_conversations(path: str) -> list[list[dict]]:
  """The conversations of a JSONL file, each a list of {"role", "content"} messages; a bad
  line is an error naming the file and line."""
  conversations = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not JSON: {e.msg}.") from None
      conversations.append(_conversation(record, where))
  if not conversations:
    raise ValueError(f"{path} holds no conversations.")
  return conversations


def read_tasks(path: str) -> list[str]:
  """Each line's optional "task" tag ("" where it has none), in the order of
  `read_conversations`: which scorer an evaluation applies to the reply."""
  with open(path) as f:
    return [json.loads(line).get("task", "") for line in f if line.strip()]


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
