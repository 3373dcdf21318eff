"""Differential fuzzing of our safetensors reader against the official `safetensors` library.

Each example writes random small tensors with `safetensors.numpy.save_file`, then mutates the
file: the header length field, the JSON text (bytes flipped, inserted, deleted, padded), the
JSON values (offsets, shapes, dtypes, fields, __metadata__, repeated names), and the file's
end (cut, extended, or only its first bytes kept). The official reader is
`safetensors.deserialize` (raw bytes and dtype names: its numpy loader has no bfloat16). On
every input either both accept with the same tensors, or ours raises a ValueError naming the
file; ours may refuse what the official one accepts only as documented in `safetensors_io`
(dtypes numpy lacks, shapes numpy cannot hold, a repeated tensor name). Every kind of the
official library's refusal must be met, and files both accept.

CI runs 200 derandomized examples in a few seconds; for a longer run:
    ATTENTION_JAX_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q -p no:xdist -s \
        tests/pretrained/test_safetensors_fuzz.py
"""

import collections
import json
import os
import signal
import struct
import tempfile

import ml_dtypes
import numpy as np
import safetensors
from hypothesis import HealthCheck, event, given, settings, strategies as st
from safetensors.numpy import save_file

from attention_jax.pretrained import safetensors_io

EXAMPLES = int(os.environ.get("ATTENTION_JAX_FUZZ_EXAMPLES", "200"))
OFFICIAL_DTYPES = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
                   "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32",
                   "U32", "F32", "C64", "F64", "I64", "U64"]
# The official library's reasons to refuse a file, by the words of its message.
REJECTIONS = {"header too small": "too small", "header too large": "too large",
              "invalid header length": "length", "invalid UTF-8": "utf-8",
              "invalid JSON": "json", "invalid offset": "offset",
              "invalid shape, data type, or offset": "byte count",
              "incomplete metadata": "incomplete", "overflow": "overflow",
              "subbytes dtypes": "sub-byte"}
# Where ours refuses what the official library accepts, by the words of our message.
DEVIATIONS = {"which is not supported": "unsupported dtype", "numpy cannot hold": "numpy limit",
              "more than once": "repeated tensor name"}
NAMES = {np.dtype(v): k for k, v in safetensors_io.DTYPES.items()}

sizes = st.one_of(st.integers(-2, 40), st.sampled_from([2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64 - 1,
                                                        2 ** 64, -2 ** 63]),
                  st.booleans(), st.just(2.0))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3), max_leaves=6)
EDITS = [  # JSON-level edits of a tensor's entry: the field set (or what is done), its value
    ("data_offsets", st.lists(st.integers(0, 40), min_size=2, max_size=2)),
    ("data_offsets", st.lists(sizes, max_size=3)),
    ("shape", st.lists(st.integers(0, 4), max_size=3)),
    ("shape", st.lists(sizes, max_size=3)),
    ("shape", st.lists(st.sampled_from([2 ** 62, 2 ** 63]), min_size=1, max_size=3)),
    ("dtype", st.sampled_from(OFFICIAL_DTYPES + ["X", "f32", "F32 ", 1, None])),
    ("dtype", st.sampled_from(["F4", "F6_E2M3", "F6_E3M2"])),  # sub-byte
    ("x", json_values),  # a field of no meaning
    ("drop", st.sampled_from(["dtype", "shape", "data_offsets"])),
    ("metadata", st.sampled_from([None, {"format": "pt"}, {"a": 1}, [], "x"])),
    ("repeat", st.none())]
MUTATIONS = {  # kind: its argument
    "set_length": st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from(
        [0, 2 ** 40, safetensors_io.MAX_HEADER_SIZE + 1])),
    "shift_length": st.integers(-16, 16),
    "flip": st.tuples(st.integers(0, 999), st.one_of(
        st.integers(0, 255), st.sampled_from(list(b'{}[]",:0123456789-. \\eE')))),
    "insert": st.tuples(st.integers(0, 999), st.integers(0, 255)),
    "delete": st.integers(0, 999),
    "pad": st.binary(min_size=1, max_size=4) | st.just(b"  "),
    "cut": st.integers(1, 16),
    "keep": st.integers(0, 12) | st.integers(0, 300),
    "extend": st.binary(min_size=1, max_size=8)}
# The examples are shared out among these first mutations, so that each is tried; a second
# mutation may be any.
FIRST = ([st.tuples(st.just(kind), arg) for kind, arg in MUTATIONS.items()]
         + [st.tuples(st.just("edit"), st.tuples(st.just(field), st.integers(0, 9), value))
            for field, value in EDITS])
mutations = st.one_of(*FIRST)
tensor_specs = st.dictionaries(
    st.text("abx.", min_size=1, max_size=3),
    st.tuples(st.sampled_from([np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int8,
                               np.uint8, np.int64, np.bool_]),
              st.lists(st.integers(1, 3) | st.just(0), max_size=3)),
    min_size=1, max_size=4)


def _arrays(specs: dict, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, (dtype, shape) in specs.items():
    if dtype is np.bool_:
      arrays[name] = rng.integers(0, 2, shape).astype(bool)
    else:
      count = int(np.prod(shape)) * np.dtype(dtype).itemsize
      arrays[name] = rng.integers(0, 256, count, np.uint8).view(dtype).reshape(shape)
  return arrays


class _Pairs(list):
  """A JSON object as its (key, value) pairs, repeated keys kept."""


def _plain(value):
  """`value` with each _Pairs made a dict again, for json.dumps."""
  if isinstance(value, _Pairs):
    return {key: _plain(v) for key, v in value}
  return [_plain(v) for v in value] if isinstance(value, list) else value


def _edit(header: bytes, edit) -> bytes:
  """`header` with one JSON-level edit, or unchanged if it is no longer a JSON object."""
  try:
    pairs = json.loads(header, object_pairs_hook=_Pairs)
  except ValueError:
    return header
  if not isinstance(pairs, _Pairs):
    return header
  kind, index, value = edit
  tensors = [i for i, (key, entry) in enumerate(pairs)
             if key != "__metadata__" and isinstance(entry, _Pairs)]
  if kind == "metadata":
    pairs = [p for p in pairs if p[0] != "__metadata__"] + [("__metadata__", value)]
  elif tensors:
    i = tensors[index % len(tensors)]
    key, fields = pairs[i][0], _plain(pairs[i][1])
    if kind == "repeat":
      pairs.append((key, fields))
    elif kind == "drop":
      fields.pop(value, None)
    else:
      fields[kind] = value
    pairs[i] = (key, fields)
  return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(_plain(v))}" for k, v in pairs)
          + "}").encode()


def _mutate(file: bytes, ops) -> bytes:
  """`file` with the mutations `ops` ((kind, argument) pairs) applied."""
  (length,) = struct.unpack("<Q", file[:8])
  header, data = bytearray(file[8:8 + length]), file[8 + length:]
  length_field, cut, keep = None, 0, None  # None: the header's own length, the whole file
  for kind, arg in ops:
    if kind == "set_length":
      length_field = arg
    elif kind == "shift_length":
      length_field = max(0, (len(header) if length_field is None else length_field) + arg)
    elif kind == "flip" and header:
      header[arg[0] % len(header)] = arg[1]
    elif kind == "insert":
      header.insert(arg[0] % (len(header) + 1), arg[1])
    elif kind == "delete" and header:
      del header[arg % len(header)]
    elif kind == "pad":
      header += arg
    elif kind == "edit":
      header = bytearray(_edit(bytes(header), arg))
    elif kind == "cut":
      cut += arg
    elif kind == "keep":
      keep = arg
    elif kind == "extend":
      data += arg
  length_field = len(header) if length_field is None else length_field
  out = struct.pack("<Q", length_field % 2 ** 64) + bytes(header) + data
  return out[:max(0, len(out) - cut)][:keep]


def _official(buffer: bytes):
  """{name: (dtype name, shape, bytes)}, or the category of the official library's refusal."""
  try:
    return {name: (info["dtype"], tuple(info["shape"]), bytes(info["data"]))
            for name, info in safetensors.deserialize(buffer)}
  except Exception as e:  # any refusal counts; its words say which
    message = str(e)
    return next((category for words, category in REJECTIONS.items() if words in message),
                f"other: {message[:80]}")


def _timeout(signum, frame):
  raise TimeoutError("reading one fuzzed safetensors file took over 10 s")


def _check(path: str, buffer: bytes) -> str:
  """Reads `buffer` as `path` with both readers; asserts they agree; returns the outcome."""
  with open(path, "wb") as f:
    f.write(buffer)
  official = _official(buffer)
  previous = signal.signal(signal.SIGALRM, _timeout)
  signal.alarm(10)
  try:
    tensors = safetensors_io.Tensors(os.path.dirname(path))
    ours = {name: (NAMES[tensors.dtype(name)], tensors[name].shape, tensors[name].tobytes())
            for name in tensors}
  except ValueError as e:
    ours = e
    assert path in str(e), e
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
  if isinstance(official, dict) and isinstance(ours, dict):
    assert ours == official
    return "both accept"
  if isinstance(official, dict):  # only as documented in safetensors_io
    reason = next((r for words, r in DEVIATIONS.items() if words in str(ours)), None)
    assert reason, f"the official library accepts what ours refuses: {ours}"
    if reason == "unsupported dtype":
      assert {d for d, _, _ in official.values()} - set(safetensors_io.DTYPES)
    return f"ours refuses: {reason}"
  assert isinstance(ours, ValueError), f"the official library refuses ({official}), ours " \
      f"accepts: {buffer[:200]!r}"
  return f"both refuse: {official}"


def test_our_reader_agrees_with_the_official_library():
  outcomes = collections.Counter()
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, safetensors_io.SINGLE_FILE)
    for first in FIRST:

      @settings(max_examples=max(1, EXAMPLES // len(FIRST)), deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck))
      @given(specs=tensor_specs, seed=st.integers(0, 2 ** 32 - 1),
             metadata=st.sampled_from([None, {"format": "pt"}]), first=first,
             more=st.lists(mutations, max_size=1))
      def check(specs, seed, metadata, first, more):
        save_file(_arrays(specs, seed), path, metadata=metadata)
        with open(path, "rb") as f:
          buffer = _mutate(f.read(), [first, *more])
        outcome = _check(path, buffer)
        event(outcome)
        outcomes[outcome] += 1

      check()
  print(dict(outcomes))
  assert not [o for o in outcomes if "other" in o], outcomes
  missing = {"both accept"} | {f"both refuse: {c}" for c in REJECTIONS.values()}
  assert not missing - set(outcomes), f"never reached: {missing - set(outcomes)}"
