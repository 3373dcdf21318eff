"""Loading checkpoints written by someone else: the hash covers what is loaded, an index names
only files beside it, special files are refused unopened, and every header defect is a
ValueError naming the file, as the official safetensors library refuses them."""

import contextlib
import json
import os
import re
import shutil
import signal
import struct

import jax
import numpy as np
import pytest
import safetensors
from safetensors.numpy import save_file

from attention_jax import models, pretrained
from attention_jax.pretrained import hub, safetensors_io

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """{"single": dir, "sharded": dir} of one bert-tiny checkpoint in both layouts."""
  model = models.create("bert-tiny")
  params = model.init(jax.random.key(0), *model.example_inputs())["params"]
  root = tmp_path_factory.mktemp("exported")
  pretrained.export(model, params, str(root / "single"))
  pretrained.export(model, params, str(root / "sharded"), max_shard_bytes=60_000)
  assert sorted(os.listdir(root / "sharded")) == [
      "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
      "model.safetensors.index.json"]
  return {"single": root / "single", "sharded": root / "sharded"}


def _copy(exported, layout, tmp_path):
  return shutil.copytree(exported[layout], tmp_path / layout)


@contextlib.contextmanager
def _deadline(seconds):
  """Fails what takes longer than `seconds` (a blocking open of a FIFO included)."""
  def fail(signum, frame):
    raise TimeoutError(f"over {seconds} s: the loader blocked")
  previous = signal.signal(signal.SIGALRM, fail)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- 1. The hash covers exactly the files that are loaded.

def test_a_directory_with_both_layouts_is_refused(exported, tmp_path):
  directory = _copy(exported, "sharded", tmp_path)
  other = {"embeddings.word_embeddings.weight": np.zeros((3, 2), np.float32)}
  save_file(other, str(directory / "model.safetensors"))  # weights B beside the shards (A)
  with pytest.raises(ValueError, match="both model.safetensors and model.safetensors.index.json"
                     ".*remove one"):
    pretrained.load(str(directory), sha256=hub.sha256_of(str(directory / "model.safetensors")))
  for function in (hub.weights_sha256, hub.file_digests, safetensors_io.Tensors):
    with pytest.raises(ValueError, match="ambiguous"):
      function(str(directory))


def test_the_hash_of_a_sharded_checkpoint_covers_its_index_and_every_shard(exported, tmp_path):
  directory = _copy(exported, "sharded", tmp_path)
  files = safetensors_io.weight_files(str(directory))
  assert os.path.basename(files[0]) == "model.safetensors.index.json"
  assert safetensors_io.Tensors(str(directory)).files == files[1:]
  before = hub.weights_sha256(str(directory))
  assert pretrained.load(str(directory), sha256=before)[0].config.width == 32
  for path in files:
    original = open(path, "rb").read()
    with open(path, "wb") as f:  # the index re-indented; a shard's last bit flipped
      f.write(json.dumps(json.loads(original), indent=1).encode() if path == files[0]
              else original[:-1] + bytes([original[-1] ^ 1]))
    assert hub.weights_sha256(str(directory)) != before, path
    with open(path, "wb") as f:
      f.write(original)
  assert hub.weights_sha256(str(directory)) == before
  with open(files[-1], "r+b") as f:
    f.seek(-1, os.SEEK_END)
    f.write(b"\1")
  with pytest.raises(ValueError, match="SHA-256"):
    pretrained.load(str(directory), sha256=before)


def test_the_pinned_minilm_digest_still_holds():
  directory, pinned = pretrained.resolve(MINILM)
  assert safetensors_io.weight_files(directory) == [os.path.join(directory,
                                                                 "model.safetensors")]
  assert hub.weights_sha256(directory) == pinned == hub.file_digests(directory)["weights"]


def test_file_digests_see_a_change_to_config_and_tokenizer_files(exported, tmp_path):
  directory = _copy(exported, "single", tmp_path)
  (directory / "tokenizer.json").write_text("{}")
  (directory / "vocab.txt").write_text("[PAD]\n")
  before = hub.file_digests(str(directory))
  assert set(before) == {"config.json", "tokenizer.json", "vocab.txt", "weights"}
  assert before["config.json"] == hub.sha256_of(str(directory / "config.json"))
  for name, change in [("config.json", ' '), ("tokenizer.json", ' '), ("vocab.txt", "[UNK]\n")]:
    with open(directory / name, "a") as f:
      f.write(change)
    after = hub.file_digests(str(directory))
    assert {k for k in before if before[k] != after[k]} == {name}
    before = after
  (directory / "chat_template.jinja").write_text("{{ messages }}")
  assert set(hub.file_digests(str(directory))) - set(before) == {"chat_template.jinja"}
  assert set(hub.CHECKPOINT_FILES) >= {"generation_config.json", "tokenizer_config.json",
                                       "special_tokens_map.json", "sentence_bert_config.json"}


# --- 2. An index names only regular files beside it.

def _index(directory):
  path = directory / "model.safetensors.index.json"
  return path, json.loads(path.read_text())


@pytest.mark.parametrize("entry", ["../outside.safetensors", "ABSOLUTE", "/etc/passwd",
                                   "sub/x.safetensors", "..\\x.safetensors", ".", "..", "",
                                   "x\0.safetensors"],
                         ids=["parent", "absolute", "passwd", "subdirectory", "backslash", "dot",
                              "dotdot", "empty", "nul"])
def test_index_entries_must_be_bare_file_names(exported, tmp_path, entry):
  directory = _copy(exported, "sharded", tmp_path)
  outside = tmp_path / "outside.safetensors"  # a valid file, so only the check refuses it
  save_file({"x": np.zeros(2, np.float32)}, str(outside))
  entry = str(outside) if entry == "ABSOLUTE" else entry
  path, index = _index(directory)
  tensor = sorted(index["weight_map"])[0]
  index["weight_map"][tensor] = entry
  path.write_text(json.dumps(index))
  with pytest.raises(ValueError, match=re.escape(f"{path}: the weight_map entry '{tensor}'")
                     + ".*not the name of a file beside the index"):
    pretrained.load(str(directory))
  with pytest.raises(ValueError, match="not the name of a file"):
    hub.weights_sha256(str(directory))


@pytest.mark.parametrize("index", [[], {"weight_map": []}, {"weight_map": {"a": 1}},
                                   {"metadata": {}}], ids=["list", "map-list", "int", "none"])
def test_an_index_must_be_an_object_with_a_weight_map_of_strings(exported, tmp_path, index):
  directory = _copy(exported, "sharded", tmp_path)
  path, _ = _index(directory)
  path.write_text(json.dumps(index))
  with pytest.raises(ValueError, match=re.escape(str(path))):
    safetensors_io.Tensors(str(directory))


@pytest.mark.parametrize("which", ["single", "shard", "index"])
def test_a_fifo_is_refused_without_being_opened(exported, tmp_path, which):
  directory = _copy(exported, "single" if which == "single" else "sharded", tmp_path)
  index = directory / "model.safetensors.index.json"
  name = {"single": "model.safetensors", "index": index.name,
          "shard": "model-00001-of-00002.safetensors"}[which]
  os.remove(directory / name)
  os.mkfifo(directory / name)
  match = (re.escape(f"{index}: the weight_map entry ") + f".* names {name}, which is a FIFO"
           if which == "shard" else re.escape(f"{directory / name} is a FIFO, not a regular"))
  with _deadline(10):
    for function in (pretrained.load, hub.weights_sha256, safetensors_io.weight_files):
      with pytest.raises(ValueError, match=match):
        function(str(directory))


def test_a_directory_or_fifo_among_the_other_files_is_refused(exported, tmp_path):
  directory = _copy(exported, "single", tmp_path)
  os.mkfifo(directory / "tokenizer.json")
  with _deadline(10), pytest.raises(ValueError, match="tokenizer.json is a FIFO"):
    hub.file_digests(str(directory))
  os.remove(directory / "tokenizer.json")
  os.mkdir(directory / "vocab.txt")
  with pytest.raises(ValueError, match="vocab.txt is a directory"):
    hub.file_digests(str(directory))


def test_symlinked_files_load_as_in_the_hugging_face_cache(exported, tmp_path):
  blobs, directory = tmp_path / "blobs", tmp_path / "snapshot"
  shutil.copytree(exported["sharded"], blobs)
  directory.mkdir()
  for name in os.listdir(blobs):
    os.symlink(blobs / name, directory / name)
  assert hub.weights_sha256(str(directory)) == hub.weights_sha256(str(exported["sharded"]))
  assert pretrained.load(str(directory))[0].config.width == 32


# --- 3. Every header defect is a ValueError naming the file (and the tensor).

A = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
B = {"dtype": "I8", "shape": [4], "data_offsets": [24, 28]}


def _file(header, data=bytes(28), length=None) -> bytes:
  text = header if isinstance(header, bytes) else json.dumps(header).encode()
  return struct.pack("<Q", len(text) if length is None else length) + text + data


DEFECTS = {  # name: (file bytes, what the message says)
    "header length 2^40": (_file({"a": A}, length=2 ** 40), "1099511627776 is over 100000000"),
    "header length past the file": (_file({"a": A}, length=1000), "runs past the end"),
    "shorter than 8 bytes": (b"\1\0\0", "shorter than 8 bytes"),
    "truncated": (_file({"a": A, "b": B})[:-1], "truncated"),
    "extended": (_file({"a": A, "b": B}) + b"\0", "extended"),
    "no tensors, data left": (_file({}), "holds 28 bytes after its header"),
    "negative offset": (_file({"a": {**A, "data_offsets": [-24, 0]}, "b": B}),
                        "tensor 'a' has data_offsets"),
    "reversed offsets": (_file({"a": {**A, "data_offsets": [24, 0]}, "b": B}),
                         "tensor 'a' has data_offsets"),
    "overlapping offsets": (_file({"a": A, "b": {**B, "data_offsets": [20, 24]}}, bytes(24)),
                            "tensor 'b' has data_offsets .* gaps or overlaps"),
    "a gap": (_file({"a": A, "b": {**B, "data_offsets": [28, 32]}}, bytes(32)),
              "tensor 'b' .* gaps or overlaps"),
    "shape -1": (_file({"a": {**A, "shape": [-1, 3]}, "b": B}), "tensor 'a' has shape"),
    "shape of bools": (_file({"a": {**A, "shape": [True, 6]}, "b": B}), "tensor 'a' has shape"),
    "shape of floats": (_file({"a": {**A, "shape": [2.0, 3]}, "b": B}), "tensor 'a' has shape"),
    "shape and offsets disagree": (_file({"a": {**A, "shape": [2, 2]}, "b": B}),
                                   "tensor 'a': shape .* 16 bytes, but .* hold 24"),
    "shape overflows": (_file({"a": {**A, "shape": [2 ** 63, 2 ** 63]}, "b": B}),
                        "tensor 'a': .* over 2\\^64 bytes"),
    "not an object": (_file([]), "header is a JSON list, not an object"),
    "an entry not an object": (_file({"a": 5}, b""), "tensor 'a' is not an object"),
    "a field missing": (_file({"a": {"dtype": "F32", "shape": [2, 3]}, "b": B}),
                        "tensor 'a' lacks data_offsets"),
    "a field twice": (_file(b'{"a":{"dtype":"F32","dtype":"F32","shape":[2,3],'
                            b'"data_offsets":[0,24]}}', bytes(24)), "tensor 'a' has dtype more"),
    "unknown dtype": (_file({"a": {**A, "dtype": "F31"}, "b": B}), "tensor 'a' has dtype 'F31'"),
    "metadata not strings": (_file({"__metadata__": {"format": 1}, "a": A, "b": B}),
                             "__metadata__ is not an object of strings"),
    "not JSON": (_file(b'{"a":', b""), "not JSON"),
    "garbage after the JSON": (_file(b'{}x', b""), "not JSON"),
    "NaN": (_file(b'{"__metadata__":{"a":NaN}}', b""), "not JSON"),
    "not UTF-8": (_file(b'{"\xff":1}', b""), "not JSON"),
    "a lone surrogate": (_file(b'{"__metadata__":{"a":"\\ud800"}}', b""), "surrogate"),
    "nested too deep": (_file(b'{"a":{"dtype":"U8","shape":[],"data_offsets":[0,1],"x":'
                              + b"[" * 200 + b"]" * 200 + b"}}", b"\0"), "deeper than 127"),
    "nested past Python's recursion limit": (_file(b"[" * 100_000 + b"]" * 100_000, b""),
                                             "not JSON"),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_header_defects_are_value_errors_naming_the_file(tmp_path, name):
  data, match = DEFECTS[name]
  path = tmp_path / "model.safetensors"
  path.write_bytes(data)
  with pytest.raises(ValueError, match=match) as error:
    safetensors_io.Tensors(str(tmp_path))
  assert str(path) in str(error.value)
  with pytest.raises(safetensors.SafetensorError):  # the official library refuses it too
    safetensors.deserialize(data)


def test_a_tensor_named_twice_is_refused_where_the_official_library_keeps_the_last(tmp_path):
  entry = b'{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}'
  data = _file(b'{"a":' + entry + b',"a":' + entry + b'}', bytes(24))
  (tmp_path / "model.safetensors").write_bytes(data)
  with pytest.raises(ValueError, match="'a' more than once"):
    safetensors_io.Tensors(str(tmp_path))
  assert [name for name, _ in safetensors.deserialize(data)] == ["a"]


ACCEPTED = {  # as the official library accepts them
    "empty header": _file({}, b""),
    "padded with spaces, tabs and newlines": _file(b'{"a":{"dtype":"I8","shape":[4],'
                                                   b'"data_offsets":[0,4]}} \t\n\r ', bytes(4)),
    "zero-size tensors": _file({"z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
                                "a": {**A, "data_offsets": [0, 24]},
                                "y": {"dtype": "F64", "shape": [0], "data_offsets": [24, 24]},
                                "b": B}),
    "a scalar": _file({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, bytes(4)),
    "fields of no meaning": _file({"a": {**A, "x": [1, {"y": None}]}, "b": B}),
    "metadata null": _file({"__metadata__": None, "a": A, "b": B}),
    "offsets out of order": _file({"b": {**B, "data_offsets": [0, 4]},
                                   "a": {**A, "data_offsets": [4, 28]}}),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_what_the_official_library_accepts_loads_the_same(tmp_path, name):
  path = tmp_path / "model.safetensors"
  path.write_bytes(ACCEPTED[name])
  ours = safetensors_io.Tensors(str(tmp_path))
  official = {n: info for n, info in safetensors.deserialize(ACCEPTED[name])}
  assert set(ours) == set(official)
  for n, info in official.items():
    assert ours[n].shape == tuple(info["shape"]) and ours[n].tobytes() == bytes(info["data"])


def test_a_tensor_is_never_read_beyond_its_range(tmp_path):
  path = tmp_path / "model.safetensors"
  save_file({"a": np.arange(6, dtype=np.float32), "b": np.arange(4, dtype=np.int8)}, str(path))
  tensors = safetensors_io.Tensors(str(tmp_path))
  np.testing.assert_array_equal(tensors["a"], np.arange(6))
  with open(path, "ab") as f:  # grown after the header was validated
    f.write(b"\1" * 8)
  np.testing.assert_array_equal(tensors["b"], np.arange(4))
  with open(path, "r+b") as f:  # cut
    f.truncate(os.path.getsize(path) - 10)
  with pytest.raises(ValueError, match=re.escape(f"{path} changed since it was opened")):
    [tensors[name] for name in tensors]


@pytest.mark.parametrize("dtype", ["F31", "F8_E4M3"])  # unknown; known but numpy has none
def test_an_unknown_dtype_through_load_is_a_value_error_naming_the_file(exported, tmp_path,
                                                                        dtype):
  directory = _copy(exported, "single", tmp_path)
  weights = directory / "model.safetensors"
  (length,) = struct.unpack("<Q", weights.read_bytes()[:8])
  data = weights.read_bytes()
  header = json.loads(data[8:8 + length])
  name = "encoder.layer.0.attention.self.query.weight"
  header[name]["dtype"] = dtype
  weights.write_bytes(_file(header, data[8 + length:]))
  with pytest.raises(ValueError, match=re.escape(f"{weights}: tensor '{name}' has dtype "
                                                 f"'{dtype}', which is not supported")):
    pretrained.load(str(directory))
