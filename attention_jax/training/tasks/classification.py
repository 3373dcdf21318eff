"""Classification: a label for a text, a token sequence or an image, from a dataset with a
"label" ClassLabel. `create` picks the task by the dataset's features ("text", "tokens" or
"image"); `dataset.tokenizer` then says how the inputs become the model's."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax import models
from attention_jax.data import pipeline, tokenizers
from attention_jax.data.lra import BYTE_OFFSET, CLS_ID
from attention_jax.training import finetune
from attention_jax.training.tasks.base import (ExampleTask, cross_entropy_sums, model_options,
                                               open_sources, summarize_classification,
                                               weighted)


class ClassificationTask(ExampleTask):
  """What the classifiers share. A sequence classifier is a BERT over token ids: the
  classification token (id 1) in front, padding (id 0) behind, to `dataset.seq_len`, ids below
  `dataset.vocab_size` unless a trained tokenizer sets the vocabulary. The others are ViTs over
  images."""
  FEATURE = ""  # the dataset feature classified
  ENCODINGS = ()  # what `dataset.tokenizer` may name for it, the default first

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None,
               sources: dict | None = None):
    super().__init__(config, workdir, base, sources)
    cfg = config.dataset
    features = self.sources["train"].dataset_info.features
    if "label" not in features:
      raise ValueError(f"dataset {cfg.name!r} has no 'label' feature to classify.")
    self.num_classes = features["label"].num_classes
    self.encoding = cfg.get("tokenizer", "") or self.ENCODINGS[0]
    if self.encoding not in self.ENCODINGS:
      raise ValueError(f"dataset.tokenizer={self.encoding!r} does not apply to the "
                       f"{self.FEATURE!r} of dataset {cfg.name!r}; valid: "
                       f"{', '.join(self.ENCODINGS)}.")

  @property
  def is_sequence(self) -> bool:
    """Whether the model reads token ids (a BERT) rather than an image (a ViT)."""
    return True

  def _pad_tokens(self, tokens) -> dict:
    cfg = self.config.dataset
    tokens = np.asarray(tokens, np.int32)
    if tokens.size and tokens.max() >= cfg.vocab_size:
      raise ValueError(f"dataset {cfg.name!r} has token id {tokens.max()}, but "
                       f"dataset.vocab_size is {cfg.vocab_size}: raise it.")
    ids = np.concatenate([[CLS_ID], tokens])[:cfg.seq_len]
    mask = np.zeros(cfg.seq_len, np.int32)
    mask[:len(ids)] = 1
    return {"inputs": np.pad(ids, (0, cfg.seq_len - len(ids))).astype(np.int32), "mask": mask}

  def model(self, **overrides):
    options = {**model_options(self.config, self.base), **overrides,
               "num_classes": self.num_classes}
    if self.is_sequence:
      options.setdefault("max_len", self.config.dataset.seq_len)
      options["vocab_size"] = (self.tokenizer.vocab_size if self.tokenizer is not None
                               else self.config.dataset.vocab_size)
    return models.create(self.config.model.preset, **options)

  def init_inputs(self):
    example = self._encode(self.sources["train"][0])
    return (jnp.asarray(example["inputs"])[None],)

  def loss(self, model, params, batch, rng, deterministic: bool):
    kwargs = dict(deterministic=deterministic, rngs={"dropout": rng})
    if self.is_sequence:
      logits = model.apply({"params": params}, batch["inputs"],
                           attention_mask=batch["mask"], **kwargs)["logits"]
    else:
      logits = model.apply({"params": params}, batch["inputs"], **kwargs)
    return cross_entropy_sums(logits, batch["label"], weighted(jnp.ones(batch["label"].shape),
                                                               batch))

  @staticmethod
  def summarize(sums: dict, prefix: str) -> dict:
    return summarize_classification(sums, prefix)


class TextClassificationTask(ClassificationTask):
  """Texts through a BERT: "wordpiece" (the default) over a WordPiece vocabulary trained on the
  training split (as [CLS] text [SEP]), or "bytes" over UTF-8 bytes (ids 2-257), as LRA's
  byte-level text task."""
  FEATURE = "text"
  ENCODINGS = ("wordpiece", "bytes")

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None,
               sources: dict | None = None):
    super().__init__(config, workdir, base, sources)
    cfg = config.dataset
    if self.encoding == "wordpiece":
      base_tokenizer = base.tokenizer if base else None
      if base_tokenizer is not None:  # a pretrained BERT's or a workdir's, as ours
        if base_tokenizer.to_hf() is None:
          raise ValueError(f"init_from {base.reference} reads bytes; dataset.tokenizer="
                           "'wordpiece' needs a WordPiece base (or set dataset.tokenizer="
                           "'bytes').")
        base_tokenizer = tokenizers.SubwordTokenizer(base_tokenizer.to_hf(), "wordpiece")
      self.tokenizer = tokenizers.load_or_make(
          workdir, lambda: tokenizers.SubwordTokenizer.train(
              pipeline.texts(cfg.name, "train", cfg.data_dir), cfg.vocab_size), base_tokenizer)

  def _encode(self, example):
    label = np.int32(example["label"])
    if self.encoding == "wordpiece":
      ids, mask = self.tokenizer.encode_padded(pipeline.as_text(example["text"]),
                                               self.config.dataset.seq_len)
      return {"inputs": ids, "mask": mask, "label": label}
    text = pipeline.as_text(example["text"]).encode("utf-8")
    ids = np.frombuffer(text, np.uint8).astype(np.int32) + BYTE_OFFSET
    return {**self._pad_tokens(ids), "label": label}


class TokenClassificationTask(ClassificationTask):
  """Sequences that bring their own token ids (ListOps) through a BERT."""
  FEATURE = "tokens"
  ENCODINGS = ("tokens",)

  def _encode(self, example):
    return {**self._pad_tokens(example["tokens"]), "label": np.int32(example["label"])}


class ImageClassificationTask(ClassificationTask):
  """Images: "image" (the default) through a ViT over patches, scaled to [-1, 1]; or "pixels",
  a BERT over the pixel intensities (ids 2-257), as LRA's image task."""
  FEATURE = "image"
  ENCODINGS = ("image", "pixels")

  @property
  def is_sequence(self) -> bool:
    return self.encoding == "pixels"

  def _encode(self, example):
    label = np.int32(example["label"])
    if self.encoding == "pixels":
      ids = example["image"].reshape(-1).astype(np.int32) + BYTE_OFFSET
      return {**self._pad_tokens(ids), "label": label}
    image = example["image"].astype(np.float32) / 255.0
    return {"inputs": (image - 0.5) / 0.5, "label": label}


CLASSIFIERS = (TextClassificationTask, TokenClassificationTask, ImageClassificationTask)


def create(config, workdir: str | None = None,
           base: finetune.Base | None = None) -> ClassificationTask:
  """The classifier of config.dataset's first feature among "text", "tokens" and "image"."""
  sources = open_sources(config)
  features = sources["train"].dataset_info.features
  task = next((t for t in CLASSIFIERS if t.FEATURE in features), None)
  if task is None:
    raise ValueError(f"dataset {config.dataset.name!r} has none of the features "
                     f"{', '.join(t.FEATURE for t in CLASSIFIERS)} to classify.")
  return task(config, workdir, base, sources)
