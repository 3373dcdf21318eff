"""Our tensorflow-datasets builders for data that Debian packages ship (no network, no TF).

Prepared in array_record format, read back with `builder.as_data_source()` (random access,
numpy dicts). When the Debian package is missing, preparing fails with the exact
`apt-get install` that fixes it.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import tensorflow_datasets as tfds

from attention_jax.data import lra, speech, sword

WORDNET_DIR = "/usr/share/wordnet"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# WordNet 3.0's 45 lexicographer files (supersenses), indexed by lex_filenum.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance",
    "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social", "verb.stative",
    "verb.weather", "adj.ppl")
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal",
                         "shirt", "sneaker", "bag", "ankle boot")


def require(path: str, package: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing. Install the Debian package with: "
                            f"sudo apt-get install {package}")


class KjvText(tfds.core.GeneratorBasedBuilder):
  """The King James Bible (1769), one verse per example (Debian sword-text-kjv)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        description="King James Bible verses read from the SWORD module engKJV2006eb, in "
                    "canonical order (for language modelling the order matters).",
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    verses = [v for v in sword.read_module("kjv") if v]
    return {s: self._generate_examples(verses, s) for s in ("train", "validation", "test")}

  def _generate_examples(self, verses, split):
    for i, verse in enumerate(verses):
      if sword.split_of(i) == split:
        yield i, {"text": verse}


class KjvWebText(tfds.core.GeneratorBasedBuilder):
  """English Bible text for pretraining: the King James Bible (1769) then the World English
  Bible (2015, with its preface and glossary), one verse per example (Debian sword-text-kjv,
  sword-text-web). Each module's verses are split by position as in kjv_text, so the
  validation and test verses of the KJV are those of kjv_text."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        description="KJV then WEB verses read from the SWORD modules engKJV2006eb and "
                    "engWEB2015eb, each in canonical order.",
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    modules = [[v for v in sword.read_module(name) if v] for name in ("kjv", "web")]
    return {s: self._generate_examples(modules, s) for s in ("train", "validation", "test")}

  def _generate_examples(self, modules, split):
    for m, verses in enumerate(modules):
      for i, verse in enumerate(verses):
        if sword.split_of(i) == split:
          yield m * 1_000_000 + i, {"text": verse}


class KjvReinaValera(tfds.core.GeneratorBasedBuilder):
  """Aligned verse pairs: King James (English) -> Reina-Valera 1909 (Spanish)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"en": tfds.features.Text(),
                                             "es": tfds.features.Text()}),
        description="KJV / Reina-Valera 1909 pairs by shared versification; pairs with an "
                    "empty side dropped.")

  def _split_generators(self, dl_manager):
    pairs = [(en, es) for en, es in zip(sword.read_module("kjv"),
                                        sword.read_module("reina_valera")) if en and es]
    return {s: self._generate_examples(pairs, s) for s in ("train", "validation", "test")}

  def _generate_examples(self, pairs, split):
    for i, (en, es) in enumerate(pairs):
      if sword.split_of(i) == split:
        yield i, {"en": en, "es": es}


def wordnet_glosses(root: str = WORDNET_DIR):
  """(gloss, lex_filenum) for every synset in WordNet's data.{noun,verb,adj,adv}."""
  for pos in ("noun", "verb", "adj", "adv"):
    path = os.path.join(root, f"data.{pos}")
    require(path, "wordnet-base")
    with open(path, encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("  ") or "|" not in line:
          continue  # licence header
        fields, gloss = line.split("|", 1)
        yield gloss.strip(), int(fields.split()[1])


class WordnetSupersenses(tfds.core.GeneratorBasedBuilder):
  """WordNet 3.0 gloss -> one of 45 supersenses (lexicographer files). Debian wordnet-base.

  The WordNet licence applies to this data: see /usr/share/doc/wordnet-base/copyright.
  """
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=LEXNAMES)}),
        description="Gloss of each WordNet 3.0 synset, labelled by its lexicographer file.")

  def _split_generators(self, dl_manager):
    glosses = list(wordnet_glosses())
    return {s: self._generate_examples(glosses, s) for s in ("train", "validation", "test")}

  def _generate_examples(self, glosses, split):
    for i, (gloss, label) in enumerate(glosses):
      if sword.split_of(i) == split:
        yield i, {"text": gloss, "label": label}


def read_idx(path: str) -> np.ndarray:
  """A gzip'd IDX file (the MNIST format) as a numpy array."""
  require(path, "dataset-fashion-mnist")
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMnistDebian(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from Debian's dataset-fashion-mnist (its re-gzipped files fail TFDS's
  own checksums). Train 60,000 (the last 5,000 held out as validation), test 10,000."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES)}),
        description="Fashion-MNIST (Xiao et al. 2017), MIT licence.")

  def _split_generators(self, dl_manager):
    def load(prefix):
      return (read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")),
              read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz")))
    train_images, train_labels = load("train")
    test_images, test_labels = load("t10k")
    return {"train": self._generate_examples(train_images[:55000], train_labels[:55000]),
            "validation": self._generate_examples(train_images[55000:], train_labels[55000:]),
            "test": self._generate_examples(test_images, test_labels)}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[:, :, None], "label": int(label)}


BUILDERS = {"kjv_text": KjvText, "kjv_web_text": KjvWebText,
            "kjv_reina_valera": KjvReinaValera,
            "wordnet_supersenses": WordnetSupersenses,
            "fashion_mnist_debian": FashionMnistDebian,
            "lra_listops": lra.LraListops, "lra_listops_small": lra.LraListopsSmall,
            "lra_listops_tiny": lra.LraListopsTiny, "kjv_chapter_genres": lra.KjvChapterGenres,
            "lra_pathfinder": lra.LraPathfinder, "lra_pathfinder_small": lra.LraPathfinderSmall,
            "lra_pathfinder_tiny": lra.LraPathfinderTiny,
            "kjv_speech": speech.KjvSpeech, "kjv_speech_tiny": speech.KjvSpeechTiny}
