"""Streaming safetensors: read and write one tensor at a time, single-file or sharded.

The format is 8 bytes of little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw bytes. Reading a tensor reads only its bytes (no memory map, so a
loaded model is not also resident as file pages), and writing converts and writes each tensor
in turn, so loading or exporting a model holds about one copy of it, not two or three.
Sharded checkpoints have `model.safetensors.index.json` whose "weight_map" names each
tensor's file, as Hugging Face writes them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Callable

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
          "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
          "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def is_floating(dtype) -> bool:
  """Whether `dtype` is a floating type, bfloat16 included (numpy calls it kind "V")."""
  return np.dtype(dtype) in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16)


def _read_header(path: str) -> tuple[dict, int]:
  """({name: entry}, byte offset of the data) of one safetensors file."""
  with open(path, "rb") as f:
    size_bytes = f.read(8)
    if len(size_bytes) != 8:
      raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes).")
    (size,) = struct.unpack("<Q", size_bytes)
    try:
      header = json.loads(f.read(size))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f"{path} is not a safetensors file (its header is not JSON: {e}).") \
          from None
  header.pop("__metadata__", None)
  return header, 8 + size


class Tensors(Mapping):
  """{name: numpy array} over a checkpoint's safetensors files, each read when asked for."""

  def __init__(self, directory: str):
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
      weight_map = None
    else:
      raise FileNotFoundError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}: a "
                              "Hugging Face checkpoint directory has its weights in one or "
                              "the other.")
    files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
    absent = [name for name in files if not os.path.exists(os.path.join(directory, name))]
    if absent:
      raise FileNotFoundError(f"{directory} lacks the shard(s) {', '.join(absent)} that "
                              f"{INDEX_FILE} names; copy the whole checkpoint.")
    self.files = [os.path.join(directory, name) for name in files]
    self._entries = {}  # name -> (path, data offset, header entry)
    for path in self.files:
      header, start = _read_header(path)
      for name, entry in header.items():
        self._entries[name] = (path, start, entry)
    if weight_map:
      mismatched = sorted(n for n, file in weight_map.items()
                          if n not in self._entries
                          or os.path.basename(self._entries[n][0]) != file)
      if mismatched:
        raise ValueError(f"{INDEX_FILE} in {directory} names tensors its shards do not hold: "
                         f"{', '.join(mismatched[:8])}.")

  def __getitem__(self, name: str) -> np.ndarray:
    path, start, entry = self._entries[name]
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"tensor {name} in {path} has dtype {entry['dtype']}, which is not "
                       f"supported ({', '.join(DTYPES)}).")
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
      f.seek(start + begin)
      data = f.read(end - begin)
    return np.frombuffer(data, DTYPES[entry["dtype"]]).reshape(entry["shape"])

  def dtype(self, name: str) -> np.dtype:
    return np.dtype(DTYPES[self._entries[name][2]["dtype"]])

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)


def write(directory: str, entries: list[tuple[str, tuple, np.dtype, Callable[[], np.ndarray]]],
          max_shard_bytes: int = 5 * 2 ** 30) -> list[str]:
  """Writes (name, shape, dtype, make_array) entries, calling each `make_array` only when its
  bytes are written: one file if the total fits `max_shard_bytes`, else shards
  `model-0000i-of-0000n.safetensors` and the index. Returns the files written."""
  sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype, _ in entries]
  shards, current, used = [], [], 0
  for entry, size in zip(entries, sizes):
    if current and used + size > max_shard_bytes:
      shards.append(current)
      current, used = [], 0
    current.append((entry, size))
    used += size
  shards.append(current)
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  os.makedirs(directory, exist_ok=True)
  for stale in os.listdir(directory):  # a previous export in another layout
    if stale not in names and (stale == INDEX_FILE or fnmatch.fnmatch(
        stale, "model*.safetensors")):
      os.remove(os.path.join(directory, stale))
  weight_map = {}
  for file, shard in zip(names, shards):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for (name, shape, dtype, _), size in shard:
      header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                      "data_offsets": [offset, offset + size]}
      offset += size
      weight_map[name] = file
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(os.path.join(directory, file), "wb") as f:
      f.write(struct.pack("<Q", len(encoded)) + encoded)
      for (name, shape, dtype, make), size in shard:
        array = np.ascontiguousarray(make(), dtype=dtype)
        if array.shape != tuple(shape):
          raise ValueError(f"tensor {name}: made shape {array.shape}, declared {shape}.")
        f.write(array.reshape(-1).view(np.uint8).data)
  if len(names) > 1:
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f,
                indent=2)
  return names


class Renamed(Mapping):
  """A read-on-access view of `tensors` under new names: {rename(name): tensor}."""

  def __init__(self, tensors: Mapping, rename: Callable[[str], str]):
    self._tensors = tensors
    self._names = {rename(name): name for name in tensors}

  def __getitem__(self, name: str) -> np.ndarray:
    return self._tensors[self._names[name]]

  def dtype(self, name: str) -> np.dtype:
    return self._tensors.dtype(self._names[name])

  def __iter__(self) -> Iterator[str]:
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)
