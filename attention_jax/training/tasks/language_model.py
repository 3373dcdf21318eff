"""Language modelling: next-token prediction on a text stream (GPT, Llama), and Transformer-XL's
segment recurrence."""

from __future__ import annotations

import math

import grain
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import models
from attention_jax.data import pipeline, tokenizers
from attention_jax.pretrained import ChatTokenizer
from attention_jax.training import finetune
from attention_jax.training.tasks.base import (Task, apply_with_router_losses,
                                               cross_entropy_sums, model_options,
                                               packed_next_token_sums, summarize_tokens,
                                               with_router)


class LanguageModelTask(Task):
  """Next-token prediction on a text dataset with a GPT (byte-level tokens)."""
  unit = "tokens"

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None):
    """The tokenizer is `dataset.tokenizer`'s: "bytes" (UTF-8, vocabulary 256) or "bpe" (a
    byte-level BPE of `dataset.vocab_size` trained on the training split, with ChatML's
    special tokens reserved and its chat template, so the model can be instruction-tuned)."""
    super().__init__(config, workdir, base)
    self.seq_len = config.dataset.seq_len
    self._chars_per_token = None
    kind = self.config.dataset.get("tokenizer", "bytes")
    source = f"init_from {base.reference}" if base else f"the workdir {workdir}"
    if kind == "bytes":
      if tokenizers.saved_in(workdir) == "chat":
        raise ValueError(f"the workdir {workdir} was trained with a BPE tokenizer; set "
                         "config.dataset.tokenizer='bpe' to resume it, or use a new workdir.")
      self.tokenizer = tokenizers.load_or_make(workdir, tokenizers.ByteTokenizer,
                                               base.tokenizer if base else None)
      if not isinstance(self.tokenizer, tokenizers.ByteTokenizer):
        raise ValueError(f"the {self.config.task!r} task reads UTF-8 bytes, but {source} has "
                         "another tokenizer; set config.dataset.tokenizer='bpe', or start from "
                         "a byte-level model or a new workdir.")
    elif kind == "bpe":
      saved_other = tokenizers.saved_in(workdir) == "ours"
      base_other = base is not None and not isinstance(base.tokenizer, ChatTokenizer)
      if saved_other or base_other:
        raise ValueError(f"{source} has no BPE chat tokenizer; config.dataset.tokenizer='bpe' "
                         "needs a new workdir, or an init_from that has one.")
      self.tokenizer = tokenizers.load_or_make(workdir, self._train_bpe,
                                               base.tokenizer if base else None)
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
               "vocab_size": self.vocab_size()}
    return models.create(self.config.model.preset, **options)

  def vocab_size(self) -> int:
    """The model's vocabulary: the tokenizer's, or `config.model.vocab_size` when set,
    padded above it (as published models pad theirs; the padded ids never occur in the data
    and are never sampled)."""
    wanted = self.config.model.get("vocab_size") or self.tokenizer.vocab_size
    if wanted < self.tokenizer.vocab_size:
      raise ValueError(f"config.model.vocab_size={wanted} is smaller than the tokenizer's "
                       f"{self.tokenizer.vocab_size} ids; leave it unset or pad it above.")
    return wanted

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
      logits, *router = apply_with_router_losses(model, params, batch[:, :-1],
                                                 deterministic=deterministic,
                                                 rngs={"dropout": rng})
      return with_router(cross_entropy_sums(logits, batch[:, 1:]), *router)
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
                             temperature=cfg.temperature, top_k=cfg.top_k or None,
                             vocab_limit=self.tokenizer.vocab_size)
    return cfg.prompt + self.tokenizer.decode(np.asarray(tokens[0]))


class TransformerXLTask(LanguageModelTask):
  """Byte-level language modelling with Transformer-XL's segment recurrence.

  Each example is `dataset.segments` consecutive segments of `dataset.seq_len` tokens; the
  model reads them in order, each attending to the memory the previous ones left (with the
  gradient stopped at segment boundaries, as in the paper). Memory is not carried from one
  batch to the next, so batches stay independent and resumable like any other task.
  """

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None):
    super().__init__(config, workdir, base)
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
                            "vocab_size": self.vocab_size()})

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
