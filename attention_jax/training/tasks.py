"""Tasks: what a config trains. Each task builds its tokenizer, data, model, loss and
evaluation sums; `config.task` picks one (`create` returns it ready), and adding one is a
class plus a registry entry."""

from __future__ import annotations

import math
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attention_jax import models, pretrained
from attention_jax.data import chat as chat_data
from attention_jax.data import pipeline, tokenizers
from attention_jax.data.lra import BYTE_OFFSET, CLS_ID
from attention_jax.pretrained import ChatTokenizer, PretrainedTokenizer
from attention_jax.training import bleu, finetune


def cross_entropy_sums(logits, labels, mask=None):
  """(mean loss, {"loss", "correct", "count"} sums) of integer labels where `mask` is set."""
  mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask
  correct = (jnp.argmax(logits, -1) == labels) * mask
  count = mask.sum()
  return losses.sum() / jnp.maximum(count, 1.0), {"loss": losses.sum(),
                                                   "correct": correct.sum(), "count": count}


def weighted(mask, batch):
  """`mask` [b, ...] (float) with each example's evaluation "weight" [b] applied: 0 on the
  copies that fill the last evaluation batch (pipeline.eval_batches); training has none."""
  mask = jnp.asarray(mask, jnp.float32)
  if "weight" not in batch:
    return mask
  return mask * batch["weight"].reshape((-1,) + (1,) * (mask.ndim - 1))


def packed_next_token_sums(model, params, batch, rng, deterministic: bool, scored=None):
  """(mean loss, sums) of next-token prediction on packed rows {"tokens", "segment_ids",
  "positions"} [b, length + 1]: attention stays inside each segment, and a target counts
  where it continues its segment (not padding, not a new document) and `scored` [b, length]
  (if given) allows it."""
  tokens, segments = batch["tokens"], batch["segment_ids"]
  logits = model.apply({"params": params}, tokens[:, :-1],
                       positions=batch["positions"][:, :-1], segment_ids=segments[:, :-1],
                       deterministic=deterministic, rngs={"dropout": rng})
  mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
  if scored is not None:
    mask &= scored
  return cross_entropy_sums(logits, tokens[:, 1:], weighted(mask, batch))


def summarize_classification(sums: dict, prefix: str) -> dict:
  return {f"{prefix}/loss": float(sums["loss"] / sums["count"]),
          f"{prefix}/accuracy": float(sums["correct"] / sums["count"])}


def summarize_tokens(sums: dict, prefix: str) -> dict:
  """Loss, accuracy and perplexity of next-token predictions."""
  out = summarize_classification(sums, prefix)
  out[f"{prefix}/perplexity"] = math.exp(min(out[f"{prefix}/loss"], 50.0))
  return out


def model_options(config, base: finetune.Base | None = None) -> dict:
  """Model fields: the base's architecture (when fine-tuning), then config.model's fields,
  then LoRA adapters if config.finetune.mode is "lora"."""
  options = dict(base.model_fields) if base else {}
  options.update({k: v for k, v in config.model.items() if k != "preset"})
  spec = finetune.lora_spec(config)
  if spec:
    options["lora"] = spec
  return options


def load_or_make_tokenizer(workdir: str | None, make, base: finetune.Base | None = None):
  """The workdir's saved tokenizer (a resumed run must not re-train it), else the base's
  (its parameters were trained with it), else `make()`."""
  path = workdir and os.path.join(workdir, tokenizers.TOKENIZER_FILE)
  if path and os.path.exists(path):
    return tokenizers.load(workdir)
  if base is not None and base.tokenizer is not None:
    tokenizer = base.tokenizer
    if isinstance(tokenizer, PretrainedTokenizer):
      tokenizer = tokenizers.SubwordTokenizer(tokenizer.tokenizer, "wordpiece")
  else:
    tokenizer = make()  # deterministic: every host builds the same one
  if workdir and jax.process_index() == 0:
    tokenizers.save(tokenizer, workdir)
  return tokenizer


CHAT_TOKENIZER_DIR = "chat_tokenizer"  # in a workdir: a BPE tokenizer and its chat template


def load_or_make_chat_tokenizer(workdir: str | None, base: finetune.Base | None = None,
                                make=None) -> ChatTokenizer:
  """The workdir's saved chat tokenizer (a resumed run's), else the base's, else `make()`;
  saved in workdir/chat_tokenizer/ (tokenizer.json, tokenizer_config.json) when new."""
  saved = os.path.join(workdir, CHAT_TOKENIZER_DIR) if workdir else None
  if saved and os.path.exists(os.path.join(saved, "tokenizer.json")):
    return ChatTokenizer.from_directory(saved)
  if base is not None and isinstance(base.tokenizer, ChatTokenizer):
    tokenizer = base.tokenizer
  elif make is not None:
    tokenizer = make()  # deterministic: every host builds the same one
  else:
    raise ValueError("this task needs a tokenizer with a chat template: set "
                     "config.init_from to a Hugging Face checkpoint directory with "
                     "tokenizer.json and a chat template (tokenizer_config.json or "
                     "chat_template.jinja), or to a workdir that has one.")
  if saved and jax.process_index() == 0:
    tokenizer.save(saved)
  return tokenizer


class Task:
  """What a config trains: the interface the trainer, experiments.eval and experiments.plan
  call. Subclasses implement the methods that raise; the two hooks default to nothing."""
  unit = "examples"  # what items_per_example counts, for throughput lines
  decodes = False  # whether decode_metrics has metrics to add (it decodes: slow)

  def __init__(self, config):
    self.config = config
    self.tokenizer = None
    self.base = None

  def prepare(self, workdir: str | None, base: finetune.Base | None = None):
    """Builds (or reloads from `workdir`) the tokenizer; `base` is config.init_from's.
    Called once, by `create`: a task is never used before it."""
    raise NotImplementedError

  def datasets(self):
    """(train, eval) grain MapDatasets of examples."""
    raise NotImplementedError

  def model(self, **overrides):
    """The Flax module, config.model's fields with `overrides` on top."""
    raise NotImplementedError

  def init_inputs(self) -> tuple:
    """Example inputs for model.init."""
    raise NotImplementedError

  def items_per_example(self) -> int:
    return 1

  def loss(self, model, params, batch, rng, deterministic: bool):
    """(mean loss, sums) of a batch; the sums add up over batches for `summarize`. Evaluation
    batches of dict examples carry a "weight" [b] (pipeline.eval_batches: 0 on the copies
    that fill the last batch): the sums must leave those out (`weighted`)."""
    raise NotImplementedError

  def summarize(self, sums: dict, prefix: str) -> dict:
    """Metrics {f"{prefix}/name": float} from summed evaluation sums (host numpy)."""
    raise NotImplementedError

  def decode_metrics(self, model, params, prefix: str = "eval") -> dict:
    """Metrics that need decoding (BLEU) when `decodes`; `params` are host arrays."""
    return {}

  def sample(self, model, params, rng) -> str | None:
    """A demonstration output at the end of training. Default: none."""
    return None


class LanguageModelTask(Task):
  """Next-token prediction on a text dataset with a GPT (byte-level tokens)."""
  unit = "tokens"

  def __init__(self, config):
    super().__init__(config)
    self.seq_len = config.dataset.seq_len
    self._chars_per_token = None

  def prepare(self, workdir: str | None, base: finetune.Base | None = None):
    """The tokenizer of `dataset.tokenizer`: "bytes" (UTF-8, vocabulary 256) or "bpe" (a
    byte-level BPE of `dataset.vocab_size` trained on the training split, with ChatML's
    special tokens reserved and its chat template, so the model can be instruction-tuned)."""
    self.base = base
    kind = self.config.dataset.get("tokenizer", "bytes")
    source = f"init_from {base.reference}" if base else f"the workdir {workdir}"
    if kind == "bytes":
      if workdir and os.path.isdir(os.path.join(workdir, CHAT_TOKENIZER_DIR)):
        raise ValueError(f"the workdir {workdir} was trained with a BPE tokenizer; set "
                         "config.dataset.tokenizer='bpe' to resume it, or use a new workdir.")
      self.tokenizer = load_or_make_tokenizer(workdir, tokenizers.ByteTokenizer, base)
      if not isinstance(self.tokenizer, tokenizers.ByteTokenizer):
        raise ValueError(f"the {self.config.task!r} task reads UTF-8 bytes, but {source} has "
                         "another tokenizer; set config.dataset.tokenizer='bpe', or start from "
                         "a byte-level model or a new workdir.")
    elif kind == "bpe":
      saved_other = workdir and os.path.exists(os.path.join(workdir, tokenizers.TOKENIZER_FILE))
      base_other = base is not None and not isinstance(base.tokenizer, ChatTokenizer)
      if saved_other or base_other:
        raise ValueError(f"{source} has no BPE chat tokenizer; config.dataset.tokenizer='bpe' "
                         "needs a new workdir, or an init_from that has one.")
      self.tokenizer = load_or_make_chat_tokenizer(workdir, base, self._train_bpe)
    else:
      raise ValueError(f"config.dataset.tokenizer must be 'bytes' or 'bpe', got {kind!r}.")

  def _train_bpe(self) -> ChatTokenizer:
    cfg = self.config.dataset
    texts = pipeline.texts(cfg.name, "train", cfg.data_dir)
    return ChatTokenizer.chatml(tokenizers.train_byte_level_bpe(texts, cfg.vocab_size))

  def datasets(self):
    """(train, eval) grain MapDatasets: int32 windows [seq_len + 1] of the text stream, or
    with `dataset.pack`, dicts of documents packed with segment ids and positions."""
    cfg = self.config.dataset
    splits = ("train", cfg.eval_split)
    if cfg.get("pack", False):
      packed = [pipeline.pack_documents(pipeline.text_documents(
          cfg.name, split, self.tokenizer, cfg.data_dir), self.seq_len) for split in splits]
      return tuple(grain.MapDataset.range(len(p["tokens"])).map(
          lambda i, p=p: {k: v[i] for k, v in p.items()}) for p in packed)
    return tuple(pipeline.lm_windows(pipeline.text_stream(
        cfg.name, split, self.tokenizer, cfg.data_dir), self.seq_len) for split in splits)

  def model(self, **overrides):
    options = {"max_len": self.seq_len, **model_options(self.config, self.base), **overrides,
               "vocab_size": self.tokenizer.vocab_size}
    return models.create(self.config.model.preset, **options)

  def init_inputs(self):
    return (jnp.zeros((1, self.seq_len), jnp.int32),)

  def items_per_example(self) -> int:
    return self.seq_len

  def loss(self, model, params, batch, rng, deterministic: bool):
    """Mean next-token cross-entropy of a batch; returns (loss, sums).

    A batch is int32 [b, seq_len + 1], or packed documents {"tokens", "segment_ids",
    "positions"} where attention stays inside each document and targets that start a new
    document (or are padding) are not scored."""
    if not isinstance(batch, dict):
      logits = model.apply({"params": params}, batch[:, :-1], deterministic=deterministic,
                           rngs={"dropout": rng})
      return cross_entropy_sums(logits, batch[:, 1:])
    return packed_next_token_sums(model, params, batch, rng, deterministic)

  def summarize(self, sums: dict, prefix: str) -> dict:
    """Loss, accuracy, perplexity and bits per character; with a BPE also bits per token
    (bits per character then divides by the evaluation split's characters per token)."""
    out = summarize_tokens(sums, prefix)
    bits = out[f"{prefix}/loss"] / math.log(2)
    if isinstance(self.tokenizer, tokenizers.ByteTokenizer):
      out[f"{prefix}/bits_per_char"] = bits  # a byte per token: exact for ASCII text
    else:
      out[f"{prefix}/bits_per_token"] = bits
      out[f"{prefix}/bits_per_char"] = bits / self.chars_per_token()
    return out

  def chars_per_token(self) -> float:
    """Characters per token of the evaluation split's text (newlines included), counted
    once."""
    if self._chars_per_token is None:
      cfg = self.config.dataset
      texts = [t + "\n" for t in pipeline.texts(cfg.name, cfg.eval_split, cfg.data_dir)]
      self._chars_per_token = sum(map(len, texts)) / sum(
          len(self.tokenizer.encode(t)) for t in texts)
    return self._chars_per_token

  def sample(self, model, params, rng) -> str | None:
    """A continuation of config.sample.prompt (the demo at the end of training); none when
    config.sample.max_new_tokens is 0."""
    cfg = self.config.sample
    if cfg.max_new_tokens == 0:
      return None
    prompt = np.asarray(self.tokenizer.encode(cfg.prompt), np.int32)[None]
    limit = model.config.max_len - prompt.shape[1]
    tokens = models.generate(model, params, prompt,
                             max_new_tokens=min(cfg.max_new_tokens, limit), rng=rng,
                             temperature=cfg.temperature, top_k=cfg.top_k or None)
    return cfg.prompt + self.tokenizer.decode(np.asarray(tokens[0]))


class TransformerXLTask(LanguageModelTask):
  """Byte-level language modelling with Transformer-XL's segment recurrence.

  Each example is `dataset.segments` consecutive segments of `dataset.seq_len` tokens; the
  model reads them in order, each attending to the memory the previous ones left (with the
  gradient stopped at segment boundaries, as in the paper). Memory is not carried from one
  batch to the next, so batches stay independent and resumable like any other task.
  """

  def __init__(self, config):
    super().__init__(config)
    self.segments = config.dataset.segments

  def datasets(self):
    cfg = self.config.dataset
    streams = {split: pipeline.text_stream(cfg.name, split, self.tokenizer, cfg.data_dir)
               for split in ("train", cfg.eval_split)}
    length = self.seq_len * self.segments
    return (pipeline.lm_windows(streams["train"], length),
            pipeline.lm_windows(streams[cfg.eval_split], length))

  def model(self, **overrides):
    return models.create(self.config.model.preset,
                         **{**model_options(self.config, self.base), **overrides,
                            "vocab_size": self.tokenizer.vocab_size})

  def items_per_example(self) -> int:
    return self.seq_len * self.segments

  def loss(self, model, params, batch, rng, deterministic: bool):
    memory, total, sums = None, 0.0, None
    for s in range(self.segments):
      segment = batch[:, s * self.seq_len:(s + 1) * self.seq_len + 1]
      log_probs, memory = model.apply({"params": params}, segment[:, :-1], memory,
                                      deterministic=deterministic,
                                      rngs={"dropout": jax.random.fold_in(rng, s)})
      loss, part = cross_entropy_sums(log_probs, segment[:, 1:])
      total += loss / self.segments
      sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
    return total, sums

  def sample(self, model, params, rng) -> None:
    return None  # no KV-cache generation for Transformer-XL here


class ExampleTask(Task):
  """Base of the tasks whose examples are dataset records encoded one by one (`_encode`)."""

  def __init__(self, config):
    super().__init__(config)
    self.sources = {}

  def _load_sources(self):
    cfg = self.config.dataset
    self.sources = {split: pipeline.data_source(cfg.name, split, cfg.data_dir)
                    for split in ("train", cfg.eval_split)}

  def _encode(self, example) -> dict:
    raise NotImplementedError

  def datasets(self):
    return tuple(grain.MapDataset.source(self.sources[split]).map(self._encode)
                 for split in ("train", self.config.dataset.eval_split))

  def items_per_example(self) -> int:
    return 1


class ClassificationTask(ExampleTask):
  """Labels for texts, token sequences or images, from a dataset with a "label" ClassLabel and
  a "text", "tokens" or "image" feature. `dataset.tokenizer` says how inputs become tokens:
    "wordpiece" (texts, the default): a BERT over a WordPiece vocabulary trained on the split;
    "bytes" (texts): a BERT over UTF-8 bytes (ids 2-257), as LRA's byte-level text task;
    "pixels" (images): a BERT over the pixel intensities (ids 2-257), as LRA's image task;
    "image" (images, the default): a ViT over patches.
  Datasets with "tokens" (e.g. ListOps) bring their own ids. Token sequences get the
  classification token (id 1) in front and padding (id 0) behind, to `dataset.seq_len`, and
  their ids must be below `dataset.vocab_size`."""
  TOKENIZERS = {"text": ("wordpiece", "bytes"), "tokens": ("tokens",),
                "image": ("image", "pixels")}

  def prepare(self, workdir: str | None, base: finetune.Base | None = None):
    cfg = self.config.dataset
    self.base = base
    self._load_sources()
    features = self.sources["train"].dataset_info.features
    if "label" not in features:
      raise ValueError(f"dataset {cfg.name!r} has no 'label' feature to classify.")
    self.num_classes = features["label"].num_classes
    kind = next((k for k in self.TOKENIZERS if k in features), None)
    if kind is None:
      raise ValueError(f"dataset {cfg.name!r} has none of the features "
                       f"{', '.join(self.TOKENIZERS)} to classify.")
    self.tokenize = cfg.get("tokenizer", "") or self.TOKENIZERS[kind][0]
    if self.tokenize not in self.TOKENIZERS[kind]:
      raise ValueError(f"dataset.tokenizer={self.tokenize!r} does not apply to the {kind!r} "
                       f"of dataset {cfg.name!r}; valid: {', '.join(self.TOKENIZERS[kind])}.")
    if self.tokenize == "wordpiece":
      self.tokenizer = load_or_make_tokenizer(workdir, lambda: tokenizers.SubwordTokenizer.train(
          pipeline.texts(cfg.name, "train", cfg.data_dir), cfg.vocab_size), base)

  @property
  def is_sequence(self) -> bool:
    """Whether the model reads token ids (a BERT) rather than an image (a ViT)."""
    return self.tokenize != "image"

  def _encode(self, example):
    label = np.int32(example["label"])
    if self.tokenize == "wordpiece":
      ids, mask = self.tokenizer.encode_padded(pipeline.as_text(example["text"]),
                                               self.config.dataset.seq_len)
      return {"inputs": ids, "mask": mask, "label": label}
    if self.tokenize == "tokens":
      return {**self._pad_tokens(example["tokens"]), "label": label}
    if self.tokenize == "bytes":
      text = pipeline.as_text(example["text"]).encode("utf-8")
      ids = np.frombuffer(text, np.uint8).astype(np.int32) + BYTE_OFFSET
      return {**self._pad_tokens(ids), "label": label}
    if self.tokenize == "pixels":
      ids = example["image"].reshape(-1).astype(np.int32) + BYTE_OFFSET
      return {**self._pad_tokens(ids), "label": label}
    image = example["image"].astype(np.float32) / 255.0
    return {"inputs": (image - 0.5) / 0.5, "label": label}

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
      options["vocab_size"] = (self.tokenizer.vocab_size if self.tokenize == "wordpiece"
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


class TranslationTask(ExampleTask):
  """Source -> target sentences with the encoder-decoder over a joint BPE vocabulary;
  evaluation adds corpus BLEU of beam-search (or greedy) translations."""
  decodes = True

  def prepare(self, workdir: str | None, base: finetune.Base | None = None):
    cfg = self.config.dataset
    self.base = base
    self._load_sources()
    self.tokenizer = load_or_make_tokenizer(workdir, lambda: tokenizers.SubwordTokenizer.train(
        pipeline.texts(cfg.name, "train", cfg.data_dir, (cfg.source, cfg.target)),
        cfg.vocab_size, "bpe"), base)

  def _encode(self, example):
    cfg, tok = self.config.dataset, self.tokenizer
    length = cfg.seq_len
    source, source_mask = tokenizers.pad(
        tok.encode(pipeline.as_text(example[cfg.source]))[:length - 1] + [tok.eos_id], length,
        tok.pad_id)
    target = tok.encode(pipeline.as_text(example[cfg.target]))[:length - 1]
    target_in, _ = tokenizers.pad([tok.bos_id] + target, length, tok.pad_id)
    target_out, target_mask = tokenizers.pad(target + [tok.eos_id], length, tok.pad_id)
    return {"source": source, "source_length": np.int32(source_mask.sum()),
            "target_in": target_in, "target_out": target_out, "target_mask": target_mask}

  def model(self, **overrides):
    options = {"max_len": self.config.dataset.seq_len, **model_options(self.config, self.base),
               **overrides, "vocab_size": self.tokenizer.vocab_size}
    return models.create(self.config.model.preset, **options)

  def init_inputs(self):
    tokens = jnp.zeros((1, self.config.dataset.seq_len), jnp.int32)
    return tokens, tokens

  def loss(self, model, params, batch, rng, deterministic: bool):
    logits = model.apply({"params": params}, batch["source"], batch["target_in"],
                         batch["source_length"], deterministic=deterministic,
                         rngs={"dropout": rng})
    return cross_entropy_sums(logits, batch["target_out"], weighted(batch["target_mask"], batch))

  @staticmethod
  def summarize(sums: dict, prefix: str) -> dict:
    return summarize_tokens(sums, prefix)  # BLEU comes from decode_metrics

  def decode_metrics(self, model, params, prefix: str = "eval") -> dict:
    """{prefix}/bleu of translations of the first `config.eval_bleu_examples` examples of the
    evaluation split."""
    cfg = self.config
    source = self.sources[cfg.dataset.eval_split]
    count = min(cfg.eval_bleu_examples, len(source))
    examples = [self._encode(source[i]) for i in range(count)]
    hypotheses = []
    for start in range(0, count, cfg.batch_size):
      chunk = examples[start:start + cfg.batch_size]
      tokens, _ = models.beam_search(
          model, params, np.stack([e["source"] for e in chunk]),
          beam_size=cfg.eval_beam_size, max_len=cfg.dataset.seq_len, bos_id=self.tokenizer.bos_id,
          eos_id=self.tokenizer.eos_id,
          source_lengths=np.array([e["source_length"] for e in chunk]))
      hypotheses += [self.tokenizer.decode(t) for t in np.asarray(tokens)]
    references = [pipeline.as_text(source[i][cfg.dataset.target]) for i in range(count)]
    return {f"{prefix}/bleu": bleu.corpus_bleu(hypotheses, references)}


class SftTask(Task):
  """Instruction fine-tuning of a causal LM (supervised): conversations from JSONL rendered
  with the base checkpoint's chat template, several packed per row (`dataset.seq_len` + 1
  tokens) with segment ids and positions restarting per conversation, and the loss on the
  assistant's tokens only (the prompt is context, not a target)."""
  unit = "tokens"

  def __init__(self, config):
    super().__init__(config)
    self.seq_len = config.dataset.seq_len

  def prepare(self, workdir: str | None, base: finetune.Base | None = None):
    self.base = base
    self.tokenizer = load_or_make_chat_tokenizer(workdir, base)
    if self.tokenizer.chat_template is None:
      raise ValueError(f"the tokenizer of {base.reference if base else workdir} has no chat "
                       "template; add one to its tokenizer_config.json ('chat_template').")

  def datasets(self):
    """(train, eval) grain MapDatasets of packed rows {"tokens", "loss_mask",
    "segment_ids", "positions"}, each int32 [seq_len + 1]."""
    cfg = self.config.dataset
    out = []
    for path in (cfg.train_file, cfg.eval_file):
      if not path or not os.path.exists(path):
        raise FileNotFoundError(f"sft data file {path!r} does not exist (config.dataset."
                                "train_file / eval_file: JSONL with 'messages', or 'prompt' "
                                "and 'response').")
      encoded = chat_data.encode_conversations(path, self.tokenizer, self.seq_len + 1)
      packed = chat_data.pack_conversations(encoded, self.seq_len)
      out.append(grain.MapDataset.range(len(packed["tokens"])).map(
          lambda i, p=packed: {k: v[i] for k, v in p.items()}))
    return tuple(out)

  def model(self, **overrides):
    if self.base is None:
      raise ValueError("the 'sft' task fine-tunes a pretrained model: set config.init_from.")
    model = models.create(self.config.model.preset,
                          **{**model_options(self.config, self.base), **overrides})
    pretrained.hub.check_vocabulary(self.tokenizer, model, f"init_from {self.base.reference}")
    return model

  def init_inputs(self):
    return (jnp.zeros((1, self.seq_len), jnp.int32),)

  def items_per_example(self) -> int:
    return self.seq_len

  def loss(self, model, params, batch, rng, deterministic: bool):
    """Mean cross-entropy of the next token where it is an assistant token of the same
    conversation; returns (loss, sums)."""
    return packed_next_token_sums(model, params, batch, rng, deterministic,
                                  batch["loss_mask"][:, 1:] > 0)

  @staticmethod
  def summarize(sums: dict, prefix: str) -> dict:
    return summarize_tokens(sums, prefix)

  def sample(self, model, params, rng) -> str | None:
    """The model's reply to config.sample.prompt as a user turn; none when
    config.sample.max_new_tokens is 0."""
    cfg = self.config.sample
    if cfg.max_new_tokens == 0:
      return None
    prompt = self.tokenizer.encode_chat([{"role": "user", "content": cfg.prompt}],
                                        add_generation_prompt=True)
    tokens = models.generate(model, params, [prompt], max_new_tokens=cfg.max_new_tokens,
                             rng=rng, temperature=cfg.temperature, top_k=cfg.top_k or None,
                             stop_tokens=tuple(self.tokenizer.stop_ids))
    reply = [int(t) for t in np.asarray(tokens[0]) if t not in self.tokenizer.stop_ids]
    return f"user: {cfg.prompt}\nassistant: {self.tokenizer.decode(reply)}"


TASKS = {"lm": LanguageModelTask, "xl_lm": TransformerXLTask,
         "classification": ClassificationTask, "translation": TranslationTask, "sft": SftTask}


def create(config, workdir: str | None = None, base: finetune.Base | None = None) -> Task:
  """The task `config.task` names, ready to use: its tokenizer built (or reloaded from
  `workdir`, or taken from `base`, config.init_from's) and its data sources open."""
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; valid tasks: {', '.join(sorted(TASKS))}.")
  task = TASKS[config.task](config)
  task.prepare(workdir, base)
  return task
