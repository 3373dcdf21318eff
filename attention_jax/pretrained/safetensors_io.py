"""Streaming safetensors: read and write one tensor at a time, single-file or sharded.

The format is 8 bytes of little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw bytes. Reading a tensor reads only its bytes (no memory map, so a
loaded model is not also resident as file pages), and writing converts and writes each tensor
in turn, so loading or exporting a model holds about one copy of it, not two or three.
Sharded checkpoints have `model.safetensors.index.json` whose "weight_map" names each
tensor's file, as Hugging Face writes them.

Checkpoints come from strangers, so everything is validated before a tensor is read, as the
official safetensors library does: a directory holds one layout, not both (`weight_files`
says which files its weights are, for the loader and the hash alike); the index is a JSON
object whose "weight_map" names bare files beside it; each file is a regular file (a FIFO or
device is refused unopened); a header is at most 100 MB, inside the file, strict UTF-8 JSON;
each entry has a known dtype, a shape of non-negative ints and [begin, end] offsets holding
exactly shape x itemsize bytes; the offsets tile the data from 0 to the end of the file. Each
defect is a ValueError naming the file (and the index entry or tensor), a missing file a
FileNotFoundError. We also refuse what
the official library accepts but numpy cannot hold (dtypes it lacks: F8_*, F6_*, F4; over 64
dimensions), and a tensor named twice in a header (it keeps the last). The comparison with it
is tests/pretrained/test_safetensors_fuzz.py.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator, Mapping
from typing import BinaryIO, Callable, NamedTuple

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
          "BF16": ml_dtypes.bfloat16, "C64": np.complex64, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U64": np.uint64, "U32": np.uint32,
          "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
# The official library also knows F8_*, F6_* and F4, which numpy has no dtype for; like its
# numpy loader, we refuse them (as unsupported, when the file is opened).
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER_SIZE = 100_000_000  # bytes, the official library's limit (also ours for an index)
_MAX_DEPTH = 127  # JSON nesting serde_json, the official library's parser, accepts
_LIMIT = 2 ** 64  # sizes and offsets are u64 in the official library
_FIELDS = ("dtype", "shape", "data_offsets")
_SURROGATE = re.compile("[\ud800-\udfff]")
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class Entry(NamedTuple):
  """A tensor's dtype and shape, and where its bytes lie in its file."""
  dtype: np.dtype
  shape: tuple[int, ...]
  begin: int  # byte offsets from the start of the file
  end: int


def is_floating(dtype) -> bool:
  """Whether `dtype` is a floating type, bfloat16 included (numpy calls it kind "V")."""
  return np.dtype(dtype) in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16)


def _irregular(path: str) -> str | None:
  """None if `path` is a regular file (or a symlink to one, as the Hugging Face cache stores
  files), else what it is; a FIFO would block a reader and a device could be endless."""
  mode = os.stat(path).st_mode
  if stat.S_ISREG(mode):
    return None
  return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str) -> None:
  """Refuses (ValueError) `path` unless it is a regular file, without opening it."""
  kind = _irregular(path)
  if kind:
    raise ValueError(f"{path} is {kind}, not a regular file; a checkpoint's files are plain "
                     "files (or symlinks to them).")


def open_regular(path: str) -> BinaryIO:
  """`path` opened for binary reading once `check_regular` passes."""
  check_regular(path)
  return open(path, "rb")


def _read_index(path: str) -> dict[str, str]:
  """The weight_map {tensor: shard file name} of an index, each file a bare name."""
  with open_regular(path) as f:
    text = f.read(MAX_HEADER_SIZE + 1)
  if len(text) > MAX_HEADER_SIZE:
    raise ValueError(f"{path} is over {MAX_HEADER_SIZE} bytes: not a safetensors index.")
  try:
    index = json.loads(text)
  except (ValueError, RecursionError) as e:
    raise ValueError(f"{path} is not a safetensors index: it is not JSON ({e}).") from None
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    raise ValueError(f'{path} is not a safetensors index: it needs a JSON object with a '
                     '"weight_map" object {tensor name: shard file name}.')
  for tensor, file in weight_map.items():
    if not isinstance(file, str) or file in ("", ".", "..") or any(c in file for c in "/\\\0"):
      raise ValueError(f"{path}: the weight_map entry {tensor!r}: {file!r} is not the name of "
                       "a file beside the index; an index names its shards by bare file name "
                       "(model-00001-of-00002.safetensors), without a directory.")
  return weight_map


def _layout(directory: str) -> tuple[dict[str, str] | None, list[str]]:
  """(the index's weight_map, None for a single file; the weight files, the index first)."""
  index, single = os.path.join(directory, INDEX_FILE), os.path.join(directory, SINGLE_FILE)
  if os.path.lexists(index) and os.path.lexists(single):
    raise ValueError(f"{directory} has both {SINGLE_FILE} and {INDEX_FILE}, so which are its "
                     "weights is ambiguous; remove one of the two layouts.")
  if os.path.lexists(single):
    check_regular(single)
    return None, [single]
  if not os.path.lexists(index):
    raise FileNotFoundError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}: a "
                            "Hugging Face checkpoint directory has its weights in one or "
                            "the other.")
  weight_map = _read_index(index)
  named_by = {}  # shard -> the first tensor naming it
  for tensor, file in weight_map.items():
    named_by.setdefault(file, tensor)
  shards = sorted(named_by)
  absent = [f for f in shards if not os.path.exists(os.path.join(directory, f))]
  if absent:
    raise FileNotFoundError(f"{directory} lacks the shard(s) {', '.join(absent)} that "
                            f"{INDEX_FILE} names; copy the whole checkpoint.")
  for file in shards:
    kind = _irregular(os.path.join(directory, file))
    if kind:
      raise ValueError(f"{index}: the weight_map entry {named_by[file]!r} names {file}, "
                       f"which is {kind}, not a regular file.")
  return weight_map, [index] + [os.path.join(directory, f) for f in shards]


def weight_files(directory: str) -> list[str]:
  """The files that are a checkpoint directory's weights: [model.safetensors], or the index
  and its shards in sorted order; what `Tensors` reads and `hub.weights_sha256` hashes."""
  return _layout(directory)[1]


class _Object(dict):
  """A JSON object, the last value of a repeated key kept and the others in `earlier`."""

  def __init__(self, pairs: list[tuple[str, object]]):
    super().__init__(pairs)
    self.earlier = {}
    if len(self) < len(pairs):
      last = {key: i for i, (key, _) in enumerate(pairs)}
      for i, (key, value) in enumerate(pairs):
        if last[key] != i:
          self.earlier.setdefault(key, []).append(value)


def _no_constant(name: str):
  raise ValueError(f"{name} is not JSON")


def _float(text: str) -> float:
  value = float(text)
  if math.isinf(value):
    raise ValueError(f"the number {text[:32]} is out of range")
  return value


def _int(text: str) -> int | float:
  # serde_json reads -0 and integers beyond 64 bits as floats, which no size or offset is.
  return int(text) if len(text) <= 20 and text != "-0" else _float(text)


def _parse_header(path: str, text: bytes) -> dict:
  """The header's JSON, refusing what serde_json (the official library's parser) refuses:
  invalid UTF-8, NaN and infinities, numbers out of range, lone surrogates, deep nesting."""
  try:
    header = json.loads(text.decode("utf-8"), object_pairs_hook=_Object,
                        parse_constant=_no_constant, parse_float=_float, parse_int=_int)
  except (ValueError, RecursionError) as e:
    raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e}).") \
        from None
  if not isinstance(header, dict):
    raise ValueError(f"{path} is not a safetensors file: its header is a JSON "
                     f"{type(header).__name__}, not an object.")
  stack = [(header, 1)]  # every object and list, with its depth
  while stack:
    value, depth = stack.pop()
    if depth > _MAX_DEPTH:
      raise ValueError(f"{path}: its header nests deeper than {_MAX_DEPTH} levels.")
    children = value if isinstance(value, list) else [
        *value, *value.values(), *(v for vs in value.earlier.values() for v in vs)]
    for child in children:
      if isinstance(child, (dict, list)):
        stack.append((child, depth + 1))
      elif isinstance(child, str) and _SURROGATE.search(child):
        raise ValueError(f"{path}: its header has a lone UTF-16 surrogate in {child!r:.80}.")
  return header


def _sizes(value) -> bool:
  """Whether `value` is a list of u64 ints (bools are not)."""
  return isinstance(value, list) and all(type(n) is int and 0 <= n < _LIMIT for n in value)


def _entry(path: str, name: str, entry) -> Entry:
  """One header entry, checked; offsets relative to the data."""
  where = f"{path}: tensor {name!r}"
  # The official library also takes an entry as a [dtype, shape, data_offsets] list and a
  # dtype as {"F32": null} (serde's forms of a struct and an enum); no writer makes them, and
  # we refuse them. Other fields of an entry are ignored, as there.
  if not isinstance(entry, dict):
    raise ValueError(f"{where} is not an object {{dtype, shape, data_offsets}}: {entry!r:.80}.")
  repeated = entry.earlier and sorted(entry.earlier.keys() & set(_FIELDS))
  if repeated:
    raise ValueError(f"{where} has {', '.join(repeated)} more than once.")
  missing = [field for field in _FIELDS if field not in entry]
  if missing:
    raise ValueError(f"{where} lacks {', '.join(missing)}.")
  dtype, shape, offsets = (entry[field] for field in _FIELDS)
  if not (isinstance(dtype, str) and dtype in DTYPES):
    raise ValueError(f"{where} has dtype {dtype!r:.40}, which is not supported "
                     f"({', '.join(DTYPES)}).")
  if not _sizes(shape):
    raise ValueError(f"{where} has shape {shape!r:.80}, not a list of non-negative integers.")
  if not (_sizes(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
    raise ValueError(f"{where} has data_offsets {offsets!r:.80}, not [begin, end] with "
                     "0 <= begin <= end.")
  elements = 1
  for n in shape:  # in the official library's order, so that overflows agree
    elements *= n
    if elements >= _LIMIT:
      break
  nbytes = elements * np.dtype(DTYPES[dtype]).itemsize
  if nbytes >= _LIMIT:
    raise ValueError(f"{where}: shape {shape!r:.80} of {dtype} is over 2^64 bytes.")
  begin, end = offsets
  if end - begin != nbytes:
    raise ValueError(f"{where}: shape {shape!r:.80} of {dtype} is {nbytes} bytes, but its "
                     f"data_offsets {offsets} hold {end - begin}.")
  try:  # the official library accepts what numpy cannot hold (65 dims; 0 x 2^62 floats)
    np.broadcast_to(np.empty((), DTYPES[dtype]), shape)
  except ValueError as e:
    raise ValueError(f"{where}: numpy cannot hold shape {shape!r:.80} ({e}).") from None
  return Entry(np.dtype(DTYPES[dtype]), tuple(shape), begin, end)


def _read_header(path: str) -> dict[str, Entry]:
  """{name: Entry} of one safetensors file, its whole header validated."""
  with open_regular(path) as f:
    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
      raise ValueError(f"{path} is not a safetensors file (shorter than 8 bytes).")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_SIZE:
      raise ValueError(f"{path} is not a safetensors file: its header length {length} is over "
                       f"{MAX_HEADER_SIZE} bytes.")
    if 8 + length > file_size:
      raise ValueError(f"{path} is truncated or not a safetensors file: its header length "
                       f"{length} runs past the end of the file ({file_size} bytes).")
    text = f.read(length)
  if len(text) != length:
    raise ValueError(f"{path} changed while its header was read.")
  header = _parse_header(path, text)
  if header.earlier:
    # The official library refuses a repeated __metadata__ but keeps the last of a repeated
    # tensor; we refuse that too, since readers that keep the first would see other weights.
    raise ValueError(f"{path}: its header has {', '.join(map(repr, header.earlier))} more "
                     "than once.")
  metadata = header.pop("__metadata__", None)
  if metadata is not None and not (isinstance(metadata, dict) and all(
      isinstance(v, str) for v in [*metadata.values(), *sum(metadata.earlier.values(), [])])):
    raise ValueError(f"{path}: its header's __metadata__ is not an object of strings: "
                     f"{metadata!r:.80}.")
  entries = {name: _entry(path, name, entry) for name, entry in header.items()}
  end = 0
  for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
    if entry.begin != end:
      raise ValueError(f"{path}: tensor {name!r} has data_offsets [{entry.begin}, {entry.end}]"
                       f", but the tensors before it end at {end}: the offsets must tile the "
                       "data without gaps or overlaps.")
    end = entry.end
  data_size = file_size - 8 - length
  if end != data_size:
    raise ValueError(f"{path} is truncated, extended or corrupt: its tensors' data ends at byte "
                     f"{end} of the data, but the file holds {data_size} bytes after its header.")
  start = 8 + length
  return {name: e._replace(begin=start + e.begin, end=start + e.end)
          for name, e in entries.items()}


class Tensors(Mapping):
  """{name: numpy array} over a checkpoint's safetensors files, each read when asked for."""

  def __init__(self, directory: str):
    weight_map, files = _layout(directory)
    self.files = files if weight_map is None else files[1:]  # the safetensors files
    self._entries = {}  # name -> (path, Entry)
    for path in self.files:
      for name, entry in _read_header(path).items():
        self._entries[name] = (path, entry)
    if weight_map:
      mismatched = sorted(n for n, file in weight_map.items()
                          if n not in self._entries
                          or os.path.basename(self._entries[n][0]) != file)
      if mismatched:
        raise ValueError(f"{INDEX_FILE} in {directory} names tensors its shards do not hold: "
                         f"{', '.join(mismatched[:8])}.")

  def __getitem__(self, name: str) -> np.ndarray:
    path, entry = self._entries[name]
    with open_regular(path) as f:
      f.seek(entry.begin)
      data = f.read(entry.end - entry.begin)
    if len(data) != entry.end - entry.begin:
      raise ValueError(f"{path} changed since it was opened: tensor {name!r} is cut short.")
    return np.frombuffer(data, entry.dtype).reshape(entry.shape)

  def dtype(self, name: str) -> np.dtype:
    return self._entries[name][1].dtype

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
