"""Input pipelines: TFDS data sources read through grain, with checkpointable iterators.

Training iterators shuffle deterministically (reshuffled every epoch), shard the global batch
across hosts (each host reads its own slice) and expose `get_state()` / `set_state()` so a
resumed run continues with exactly the next batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sys

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from attention_jax.data import builders

# Where datasets are prepared when a config leaves dataset.data_dir empty: $TFDS_DATA_DIR (as
# TFDS reads it), else ~/tensorflow_datasets.
DATA_DIR_VARIABLE = "TFDS_DATA_DIR"


def default_data_dir() -> str:
  return os.environ.get(DATA_DIR_VARIABLE) or os.path.join(os.path.expanduser("~"),
                                                           "tensorflow_datasets")


def _shown(data_dir: str) -> str:
  """`data_dir` as the progress line names it: by its variable or relative to home, so that
  logs and notebook outputs do not carry this machine's absolute paths."""
  if data_dir == os.environ.get(DATA_DIR_VARIABLE):
    return f"${DATA_DIR_VARIABLE}"
  home = os.path.expanduser("~")
  return "~" + data_dir[len(home):] if data_dir.startswith(home + os.sep) else data_dir


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's own chatter while it prepares (its stdout lines and absl warnings name absolute
  paths and vary with what an earlier run left behind); errors still show."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logging.set_verbosity(verbosity)


def _prepared(name: str, data_dir: str):
  """Our builder `name` in `data_dir`, prepared once: concurrent processes (test workers, the
  hosts of one job) take a file lock, and the first prepares while the others wait."""
  builder = builders.BUILDERS[name](data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = builders.BUILDERS[name](data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      print(f"preparing dataset {name} in {_shown(data_dir)} (once)", file=sys.stderr,
            flush=True)
      tfds.disable_progress_bar()
      builder.download_and_prepare()
  return builder


def data_source(name: str, split: str, data_dir: str | None = None):
  """A random-access split: our builders (prepared on first use) or any TFDS catalog name."""
  data_dir = data_dir or default_data_dir()
  if name in builders.BUILDERS:
    with _quiet_tfds():
      return _prepared(name, data_dir).as_data_source()[split]
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"unknown dataset {name!r}: neither one of ours "
                     f"({', '.join(sorted(builders.BUILDERS))}) nor in the TFDS catalog.") from e


def as_text(value) -> str:
  """A text feature as str (our builders give bytes; TFDS mock data gives str)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def texts(name: str, split: str, data_dir: str | None = None,
          fields: tuple[str, ...] = ("text",)) -> list[str]:
  """The text fields of each example of a split, in order (example 0's fields, then example
  1's, ...); our builders' splits are read in one batch, ten times faster than one example
  at a time."""
  source = data_source(name, split, data_dir)
  indices = range(len(source))
  if name in builders.BUILDERS:  # array_record: one batched read
    examples = source.__getitems__(indices)
  else:  # catalog sources, and TFDS's mock data (whose __getitems__ differs)
    examples = [source[i] for i in indices]
  return [as_text(example[field]) for example in examples for field in fields]


def text_documents(name: str, split: str, tokenizer, data_dir: str | None = None,
                   field: str = "text") -> list[np.ndarray]:
  """Each example of a text split, in order, tokenized with a trailing newline."""
  return [np.asarray(tokenizer.encode(t + "\n"), np.int32)
          for t in texts(name, split, data_dir, (field,))]


def text_stream(name: str, split: str, tokenizer, data_dir: str | None = None,
                field: str = "text") -> np.ndarray:
  """All examples of a text split, in order, as one token stream. int32 [n]."""
  return np.concatenate(text_documents(name, split, tokenizer, data_dir, field))


def lm_windows(tokens: np.ndarray, seq_len: int) -> grain.MapDataset:
  """Non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets)."""
  count = (len(tokens) - 1) // seq_len
  if count < 1:
    raise ValueError(f"the text has {len(tokens)} tokens, fewer than seq_len + 1 = "
                     f"{seq_len + 1}.")
  return grain.MapDataset.range(count).map(
      lambda i: tokens[i * seq_len:i * seq_len + seq_len + 1])


def pack_documents(documents: list[np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
  """Packs token sequences, in order, into rows of seq_len + 1 tokens.

  Documents are placed whole while they fit and split across rows when longer (the
  continuation starts a new segment at position 0); the tail of the last row is padding
  (segment 0).

  Returns:
    {"tokens", "segment_ids" (1, 2, ... per document within a row; 0 = padding),
     "positions" (restarting at 0 for each document)}, each int32 [rows, seq_len + 1].
  """
  width = seq_len + 1
  rows = {"tokens": [], "segment_ids": [], "positions": []}
  row = {k: [] for k in rows}

  def flush():
    pad = width - len(row["tokens"])
    for k in rows:
      rows[k].append(np.asarray(row[k] + [0] * pad, np.int32))
      row[k] = []

  for doc in documents:
    offset = 0
    while offset < len(doc):
      if len(row["tokens"]) == width:
        flush()
      take = min(width - len(row["tokens"]), len(doc) - offset)
      segment = (row["segment_ids"][-1] if row["segment_ids"] else 0) + 1
      row["tokens"] += list(doc[offset:offset + take])
      row["segment_ids"] += [segment] * take
      row["positions"] += list(range(take))  # a split document restarts in its next row
      offset += take
  if row["tokens"]:
    flush()
  return {k: np.stack(v) for k, v in rows.items()}


def train_iterator(dataset: grain.MapDataset, global_batch: int, seed: int):
  """Endless shuffled batches of this host's share of `global_batch`, checkpointable."""
  hosts, host = jax.process_count(), jax.process_index()
  if global_batch % hosts:
    raise ValueError(f"batch_size {global_batch} is not divisible by the {hosts} hosts.")
  per_host = global_batch // hosts
  dataset = dataset.shuffle(seed=seed).repeat()[host::hosts]
  return iter(dataset.batch(per_host, drop_remainder=True).to_iter_dataset())


def eval_batches(dataset: grain.MapDataset, global_batch: int, max_batches: int | None = None):
  """This host's share of the evaluation split in batches of `global_batch`, in order (a
  finite list). Examples that are dicts each count once: every one gets a "weight" (1.0), and
  the last batch is filled up with weight-0 copies of the split's first example (tasks weight
  their sums by it). Array examples (a language model's windows of one text stream) drop the
  last partial batch."""
  hosts, host = jax.process_count(), jax.process_index()
  if global_batch <= 0 or global_batch % hosts:
    raise ValueError(f"the evaluation batch {global_batch} must be a positive multiple of the "
                     f"{hosts} hosts.")
  per_host = global_batch // hosts
  if not len(dataset):
    raise ValueError("the evaluation split is empty.")
  share = dataset[host::hosts]
  weighted = isinstance(dataset[0], dict)
  # From the whole split, so that every host runs the same number of batches.
  count = -(-len(dataset) // global_batch) if weighted else len(dataset) // global_batch
  count = count if max_batches is None else min(max_batches, count)
  if not weighted:
    if count == 0:
      raise ValueError(f"the evaluation split has fewer than one batch of {global_batch}.")
    batches = share.batch(per_host, drop_remainder=True)
    return [batches[i] for i in range(count)]
  filler = {**dataset[0], "weight": np.float32(0.0)}
  batches = []
  for start in range(0, count * per_host, per_host):
    examples = [{**share[i], "weight": np.float32(1.0)}
                for i in range(start, min(start + per_host, len(share)))]
    examples += [filler] * (per_host - len(examples))
    batches.append(jax.tree.map(lambda *rows: np.stack(rows), *examples))
  return batches
