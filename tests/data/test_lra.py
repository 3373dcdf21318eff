"""The generated Long Range Arena data: ListOps to LRA's definition."""

import collections
import random

import numpy as np
import pytest

from attention_jax.data import lra, pipeline, sword


def test_listops_evaluates_by_hand():
  cases = {"[MAX 4 3 [MIN 2 3 ] 1 0 ]": 4, "[MED 1 2 3 4 ]": 2, "[MED 5 1 9 ]": 5,
           "[SM 9 9 [MIN 7 8 ] ]": 5, "[MIN [MAX 1 2 ] [SM 3 4 ] ]": 2, "7": 7}
  for text, value in cases.items():
    tree = lra.parse(text.split())
    assert lra.evaluate(tree) == value, text
    assert " ".join(lra.symbols(tree)) == text
    assert lra.listops_text(lra.listops_ids(text.split())) == text


@pytest.fixture(scope="module")
def tiny_listops(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("lra"))
  return {split: pipeline.data_source("lra_listops_tiny", split, data_dir)
          for split in ("train", "validation", "test")}


def test_listops_builder_follows_lra_definition(tiny_listops):
  low, high = lra.LraListopsTiny.LENGTHS
  seen = set()
  operators, arguments, labels = collections.Counter(), [], collections.Counter()
  for split, source in tiny_listops.items():
    assert len(source) == lra.LraListopsTiny.SIZES[split]
    for example in source.__getitems__(list(range(len(source)))):
      tokens = lra.listops_text(example["tokens"]).split()
      tree = lra.parse(tokens)
      assert lra.evaluate(tree) == example["label"]  # every label is the list's value
      assert low < len(tokens) < high
      key = tuple(tokens)
      assert key not in seen  # no duplicates, within or across splits
      seen.add(key)
      labels[int(example["label"])] += 1
      stack = [tree]
      while stack:
        node = stack.pop()
        if not isinstance(node, int):
          operators[node[0]] += 1
          arguments.append(len(node[1]))
          stack.extend(node[1])
  total = sum(operators.values())
  for operator in lra.OPERATORS:  # chosen uniformly
    assert abs(operators[operator] / total - 0.25) < 0.03, operators
  assert min(arguments) >= 2 and max(arguments) <= 10
  assert len(labels) == 10


def test_listops_generator_keeps_lengths_and_depth():
  examples = lra.generate_listops(300, 30, 120, seed=1)
  for tokens, label in examples:
    assert 30 < len(tokens) < 120
    depth = deepest = 0
    for token in tokens:
      depth += token in lra.OPERATORS
      depth -= token == lra.END
      deepest = max(deepest, depth)
    assert deepest <= lra.MAX_DEPTH - 1  # operators only above depth 10, digits at 10
  assert lra.generate_listops(20, 30, 120, seed=1) == examples[:20]  # deterministic


def test_listops_trees_before_the_length_filter_follow_the_probabilities():
  """Before filtering by length: a node is an operator with probability 0.25 (below depth
  10) and an operator has 2 to 10 arguments, uniformly (mean 6)."""
  rng = random.Random(0)
  nodes = operators = 0
  arguments = []
  for _ in range(3000):
    stack = [(lra.random_tree(rng, 10 ** 9)[0], 1)]
    while stack:
      node, depth = stack.pop()
      if depth < lra.MAX_DEPTH:
        nodes += 1
        operators += not isinstance(node, int)
      if not isinstance(node, int):
        arguments.append(len(node[1]))
        stack.extend((a, depth + 1) for a in node[1])
  assert abs(operators / nodes - lra.OPERATOR_PROBABILITY) < 0.01
  assert abs(np.mean(arguments) - 6.0) < 0.1
  assert set(arguments) == set(range(2, 11))


def test_kjv_chapters_and_their_genres(tmp_path):
  chapters = sword.chapters("kjv")
  assert len(chapters) == 1189 and sum(len(v) for _, _, v in chapters) == 31102
  verses = {(book, chapter): v for book, chapter, v in chapters}
  assert [len(verses[c]) for c in [("Genesis", 1), ("Psalms", 118), ("Psalms", 119),
                                   ("Malachi", 4), ("Revelation", 22)]] == [31, 29, 176, 6, 21]
  assert verses["John", 11][34] == "Jesus wept."
  assert [lra.GENRES[lra.genre_of(b)] for b in ("Deuteronomy", "Esther", "Song of Solomon",
                                               "Malachi", "Acts", "Jude", "Revelation")] == [
      "law", "history", "wisdom and poetry", "prophets", "gospels and acts", "epistles",
      "apocalyptic"]
  sources = {s: pipeline.data_source("kjv_chapter_genres", s, str(tmp_path))
             for s in ("train", "validation", "test")}
  assert {s: len(x) for s, x in sources.items()} == {"train": 951, "validation": 119,
                                                     "test": 119}
  labels = collections.Counter()
  for source in sources.values():
    for example in source.__getitems__(list(range(len(source)))):
      labels[lra.GENRES[example["label"]]] += 1
  assert labels["law"] == 187 and labels["apocalyptic"] == 22 and len(labels) == 7
  texts = pipeline.texts("kjv_chapter_genres", "validation", str(tmp_path))
  assert any(t.startswith("In the beginning God created") for t in texts)  # Genesis 1


def flood_fill_joined(image: np.ndarray, reach: int = lra.LINK) -> bool:
  """Whether the two 3x3 dots of a rendered Pathfinder image are joined: a breadth-first fill
  over lit pixels, stepping to any lit pixel within `reach` (a dash's gap)."""
  lit = image > 0
  size = lit.shape[0]
  dots = [(y, x) for y in range(1, size - 1) for x in range(1, size - 1)
          if lit[y - 1:y + 2, x - 1:x + 2].all()]
  assert len(dots) == 2, dots  # exactly two dots, nothing else that looks like one
  frontier, seen = [dots[0]], {dots[0]}
  while frontier:
    y, x = frontier.pop()
    for ny in range(max(y - reach, 0), min(y + reach + 1, size)):
      for nx in range(max(x - reach, 0), min(x + reach + 1, size)):
        if lit[ny, nx] and (ny, nx) not in seen:
          seen.add((ny, nx))
          frontier.append((ny, nx))
  return dots[1] in seen


def test_pathfinder_labels_match_a_flood_fill_of_the_image(tmp_path):
  examples = lra.generate_pathfinder(300, seed=3)
  assert [label for _, label in examples[:4]] == [1, 0, 1, 0]  # balanced, alternating
  for image, label in examples:
    assert flood_fill_joined(image) == bool(label)
  assert len({image.tobytes() for image, _ in examples}) == 300
  lit = [int((image > 0).sum()) for image, _ in examples]  # no pixel count gives it away
  by_label = [np.mean([n for n, (_, l) in zip(lit, examples) if l == k]) for k in (0, 1)]
  assert abs(by_label[0] - by_label[1]) < 3
  source = pipeline.data_source("lra_pathfinder_tiny", "validation", str(tmp_path))
  example = source[0]
  assert example["image"].shape == (32, 32, 1) and len(source) == 64
  assert flood_fill_joined(example["image"][:, :, 0]) == bool(example["label"])
