"""Long Range Arena tasks that no package ships: generated to their definitions, or built from
the real text Debian ships.

ListOps (Nangia & Bowman 2018, as LRA generates it): nested lists of operators over the digits
0-9, `[MIN`, `[MAX`, `[MED` (median, truncated to an int) and `[SM` (sum mod 10), each closed
by `]`. A node at depth d < 10 is an operator with probability 0.25 (2 to 10 arguments,
uniform), else a digit; at depth 10 always a digit. The length counts an operator as 2 tokens
(itself and `]`) plus its arguments, a digit as 1; LRA keeps 500 < length < 2000 and
de-duplicates. The label is the list's value (10 classes).

KJV chapter genres (our stand-in for LRA's byte-level IMDB): each chapter of the King James
Bible as one text (3,500 bytes on average, up to 13,000), labelled with its book's genre.
"""

from __future__ import annotations

import random
import statistics

import numpy as np
import tensorflow_datasets as tfds

from attention_jax.data import sword

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
# Token ids: 0 padding, 1 the classification token models prepend, then the symbols.
PAD_ID, CLS_ID = 0, 1
BYTE_OFFSET = 2  # byte-level text and pixel intensities: ids 2-257 (a vocabulary of 258)
LISTOPS_SYMBOLS = tuple(str(d) for d in range(10)) + OPERATORS + (END,)
LISTOPS_IDS = {symbol: i + 2 for i, symbol in enumerate(LISTOPS_SYMBOLS)}
LISTOPS_VOCAB_SIZE = len(LISTOPS_SYMBOLS) + 2
OPERATOR_PROBABILITY = 0.25
MAX_DEPTH = 10
MAX_ARGS = 10


class _TooLong(Exception):
  pass


def random_tree(rng: random.Random, max_length: int):
  """A random ListOps tree (a digit, or (operator, [arguments])) and its length. Raises
  _TooLong as soon as the length reaches `max_length` (such a tree would be rejected: stopping
  early leaves the distribution of the accepted ones unchanged)."""
  length = 0

  def node(depth):
    nonlocal length
    if depth < MAX_DEPTH and rng.random() < OPERATOR_PROBABILITY:
      length += 2
      operator = rng.choice(OPERATORS)
      arguments = [node(depth + 1) for _ in range(rng.randint(2, MAX_ARGS))]
      return operator, arguments
    length += 1
    if length >= max_length:
      raise _TooLong
    return rng.randrange(10)

  return node(1), length


def evaluate(tree) -> int:
  """The value of a ListOps tree."""
  if isinstance(tree, int):
    return tree
  operator, arguments = tree
  values = [evaluate(a) for a in arguments]
  if operator == "[MIN":
    return min(values)
  if operator == "[MAX":
    return max(values)
  if operator == "[MED":
    return int(statistics.median(values))
  return sum(values) % 10


def symbols(tree) -> list[str]:
  """The tree as LRA writes it: `[MAX 4 3 [MIN 2 3 ] 1 0 ]`, one symbol per token."""
  if isinstance(tree, int):
    return [str(tree)]
  operator, arguments = tree
  out = [operator]
  for a in arguments:
    out += symbols(a)
  return out + [END]


def parse(tokens: list[str]):
  """The inverse of `symbols`."""
  stack = [[None, []]]
  for token in tokens:
    if token in OPERATORS:
      stack.append([token, []])
    elif token == END:
      operator, arguments = stack.pop()
      stack[-1][1].append((operator, arguments))
    else:
      stack[-1][1].append(int(token))
  (tree,) = stack[0][1]
  return tree


def generate_listops(count: int, min_length: int, max_length: int, seed: int):
  """`count` distinct examples (symbols, label) with min_length < length < max_length."""
  rng = random.Random(seed)
  seen, examples = set(), []
  while len(examples) < count:
    try:
      tree, length = random_tree(rng, max_length)
    except _TooLong:
      continue
    if not min_length < length < max_length:
      continue
    text = " ".join(symbols(tree))
    if text not in seen:
      seen.add(text)
      examples.append((text.split(), evaluate(tree)))
  return examples


def listops_ids(tokens: list[str]) -> np.ndarray:
  return np.asarray([LISTOPS_IDS[t] for t in tokens], np.int32)


def listops_text(ids) -> str:
  """Token ids back to LRA's text (padding and the classification token dropped)."""
  return " ".join(LISTOPS_SYMBOLS[i - 2] for i in np.asarray(ids).tolist() if i >= 2)


def consecutive_splits(examples: list, sizes: dict[str, int]) -> dict[str, list]:
  """The examples cut in order into splits of the given sizes (generated data is already
  random, and de-duplicated across the whole, so no example is in two splits)."""
  splits, start = {}, 0
  for split, size in sizes.items():
    splits[split] = examples[start:start + size]
    start += size
  return splits


class LraListops(tfds.core.GeneratorBasedBuilder):
  """ListOps as Long Range Arena defines it: 96,000 / 2,000 / 2,000 distinct lists of 500 to
  2,000 tokens. Features: "tokens" (ids, `LISTOPS_IDS`), "label" (the value, 10 classes)."""
  VERSION = tfds.core.Version("1.0.0")
  SIZES = {"train": 96_000, "validation": 2_000, "test": 2_000}
  LENGTHS = (500, 2000)  # exclusive bounds, LRA's

  def _info(self):
    low, high = self.LENGTHS
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        description=f"ListOps generated to LRA's definition, {low} < length < {high}; "
                    f"token ids: 0 pad, 1 CLS, then {' '.join(LISTOPS_SYMBOLS)}.")

  def _split_generators(self, dl_manager):
    examples = generate_listops(sum(self.SIZES.values()), *self.LENGTHS, seed=0)
    return {split: self._generate_examples(part)
            for split, part in consecutive_splits(examples, self.SIZES).items()}

  def _generate_examples(self, examples):
    for i, (tokens, label) in enumerate(examples):
      yield i, {"tokens": listops_ids(tokens), "label": label}


class LraListopsSmall(LraListops):
  """ListOps sized for a 2-core CPU: the same generator, 20,000 / 1,000 / 1,000 lists of 100
  to 500 tokens (a different setting from LRA's: shorter lists)."""
  SIZES = {"train": 20_000, "validation": 1_000, "test": 1_000}
  LENGTHS = (100, 500)


class LraListopsTiny(LraListops):
  """ListOps for tests: 512 / 64 / 64 lists of 20 to 100 tokens."""
  SIZES = {"train": 512, "validation": 64, "test": 64}
  LENGTHS = (20, 100)


# The genres of the Bible's books, in canonical order: (genre, its first book).
GENRES = ("law", "history", "wisdom and poetry", "prophets", "gospels and acts", "epistles",
          "apocalyptic")
_FIRST_BOOK_OF_GENRE = ("Genesis", "Joshua", "Job", "Isaiah", "Matthew", "Romans",
                        "Revelation")


def genre_of(book: str) -> int:
  """The index in GENRES of a book of `sword.KJV_BOOKS`."""
  order = [b for b, _ in sword.KJV_BOOKS]
  starts = [order.index(first) for first in _FIRST_BOOK_OF_GENRE]
  return sum(order.index(book) >= start for start in starts) - 1


def chapter_split(index: int) -> str:
  """80/10/10 by chapter position: every 10th chapter validation, the next one test."""
  return {0: "validation", 1: "test"}.get(index % 10, "train")


class KjvChapterGenres(tfds.core.GeneratorBasedBuilder):
  """KJV chapters labelled with their book's genre (7 classes), for long byte-level text
  classification (Debian sword-text-kjv). 1,189 chapters, split by position 80/10/10."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=GENRES)}),
        description="Chapters of the King James Bible (SWORD engKJV2006eb), verses joined "
                    "by spaces, labelled law / history / wisdom and poetry / prophets / "
                    "gospels and acts / epistles / apocalyptic.")

  def _split_generators(self, dl_manager):
    chapters = sword.chapters("kjv")
    return {s: self._generate_examples(chapters, s) for s in ("train", "validation", "test")}

  def _generate_examples(self, chapters, split):
    for i, (book, _, verses) in enumerate(chapters):
      if chapter_split(i) == split:
        yield i, {"text": " ".join(verses), "label": genre_of(book)}


# --- Pathfinder (Linsley et al. 2018, LRA's "Pathfinder" at 32x32): two dots, each at the
# end of a dashed curve; label 1 when one curve joins them, 0 when they end different curves.
PATHFINDER_SIZE = 32
PATHFINDER_PATHS = 3  # curves per image, in both classes
PATH_STEPS = (14, 22)  # length of a curve, in unit steps
CLEARANCE = 3  # Chebyshev distance kept between different curves (dots included)
LINK = 2  # within a curve, lit pixels are at most this far apart (a dash's one-pixel gap)


def _random_curve(rng: np.random.Generator, size: int) -> list[tuple[int, int]] | None:
  """Pixels of a smooth random walk (unit steps, the heading turning a little each step), or
  None when it leaves the image (with room for the end dots)."""
  steps = rng.integers(*PATH_STEPS)
  headings = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.35, steps))
  start = rng.uniform(2, size - 3, 2)
  path = start + np.concatenate([[[0.0, 0.0]], np.cumsum(
      np.stack([np.sin(headings), np.cos(headings)], 1), 0)])
  pixels = np.rint(path).astype(int)
  if pixels.min() < 1 or pixels.max() >= size - 1:
    return None
  keep = np.concatenate([[True], np.any(pixels[1:] != pixels[:-1], axis=1)])
  curve = [tuple(p) for p in pixels[keep].tolist()]
  return curve if len(curve) > 6 else None


def _footprint(curve) -> set[tuple[int, int]]:
  """The curve's pixels and the 3x3 squares its end dots may take."""
  cells = set(curve)
  for y, x in (curve[0], curve[-1]):
    cells |= {(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
  return cells


def _block(blocked: np.ndarray, cells, distance: int):
  """Marks every pixel closer than `distance` (Chebyshev) to `cells` in `blocked`."""
  r = distance - 1
  for y, x in cells:
    blocked[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1] = True


def pathfinder_example(rng: np.random.Generator, connected: bool, size: int = PATHFINDER_SIZE):
  """(image uint8 [size, size], label): PATHFINDER_PATHS dashed curves at least CLEARANCE
  apart, two end dots on one curve (label 1) or on two (label 0)."""
  while True:
    curves, blocked = [], np.zeros((size, size), bool)
    for _ in range(200):
      curve = _random_curve(rng, size)
      if curve is not None and not any(blocked[c] for c in _footprint(curve)):
        curves.append(curve)
        _block(blocked, _footprint(curve), CLEARANCE)
        if len(curves) == PATHFINDER_PATHS:
          break
    if len(curves) == PATHFINDER_PATHS:
      break
  image = np.zeros((size, size), np.uint8)
  for curve in curves:
    for step, (y, x) in enumerate(curve):
      if step % 3 != 2:  # dashes of two pixels, gaps of one
        image[y, x] = 255
  ends = (curves[0][0], curves[0][-1]) if connected else (curves[0][0], curves[1][-1])
  for y, x in ends:
    image[y - 1:y + 2, x - 1:x + 2] = 255
  return image, int(connected)


def generate_pathfinder(count: int, seed: int, size: int = PATHFINDER_SIZE):
  """`count` examples, the two labels alternating, images distinct."""
  rng = np.random.default_rng(seed)
  seen, examples = set(), []
  while len(examples) < count:
    image, label = pathfinder_example(rng, connected=len(examples) % 2 == 0, size=size)
    if image.tobytes() not in seen:
      seen.add(image.tobytes())
      examples.append((image, label))
  return examples


class LraPathfinder(tfds.core.GeneratorBasedBuilder):
  """Pathfinder at 32x32 (1,024 pixels as a sequence), generated: 160,000 / 20,000 / 20,000
  images, half of each label. Features: "image" uint8 [32, 32, 1], "label" (1 = joined)."""
  VERSION = tfds.core.Version("1.0.0")
  SIZES = {"train": 160_000, "validation": 20_000, "test": 20_000}

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(PATHFINDER_SIZE, PATHFINDER_SIZE, 1),
                                          dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=("apart", "joined"))}),
        description="Pathfinder: are the two dots ends of one dashed curve? Three curves per "
                    f"image, at least {CLEARANCE} pixels apart.")

  def _split_generators(self, dl_manager):
    examples = generate_pathfinder(sum(self.SIZES.values()), seed=0)
    return {split: self._generate_examples(part)
            for split, part in consecutive_splits(examples, self.SIZES).items()}

  def _generate_examples(self, examples):
    for i, (image, label) in enumerate(examples):
      yield i, {"image": image[:, :, None], "label": label}


class LraPathfinderSmall(LraPathfinder):
  """Pathfinder sized for a 2-core CPU: 20,000 / 1,000 / 1,000 images."""
  SIZES = {"train": 20_000, "validation": 1_000, "test": 1_000}


class LraPathfinderTiny(LraPathfinder):
  """Pathfinder for tests: 512 / 64 / 64 images."""
  SIZES = {"train": 512, "validation": 64, "test": 64}
