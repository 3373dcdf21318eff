"""Tasks: what a config trains. Each task builds its data, model, loss and evaluation sums.

A task is picked by `config.task`; adding one is a new class plus a registry entry.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from attention_jax import models
from attention_jax.data import pipeline, tokenizers


class LanguageModelTask:
  """Next-token prediction on a text dataset with a GPT (byte-level tokens)."""
  unit = "tokens"

  def __init__(self, config):
    self.config = config
    self.tokenizer = tokenizers.ByteTokenizer()
    self.seq_len = config.dataset.seq_len

  def datasets(self):
    """(train, eval) grain MapDatasets of int32 windows [seq_len + 1]."""
    cfg = self.config.dataset
    streams = {split: pipeline.text_stream(cfg.name, split, self.tokenizer, cfg.data_dir)
               for split in ("train", cfg.eval_split)}
    return (pipeline.lm_windows(streams["train"], self.seq_len),
            pipeline.lm_windows(streams[cfg.eval_split], self.seq_len))

  def model(self, **overrides):
    options = {k: v for k, v in self.config.model.items() if k != "preset"}
    options.update(vocab_size=self.tokenizer.vocab_size, **overrides)
    options.setdefault("max_len", self.seq_len)
    return models.create(self.config.model.preset, **options)

  def init_inputs(self):
    return (jnp.zeros((1, self.seq_len), jnp.int32),)

  def items_per_example(self) -> int:
    return self.seq_len

  def loss(self, model, params, batch, rng, deterministic: bool):
    """Mean next-token cross-entropy of a batch [b, seq_len + 1]; returns (loss, sums)."""
    logits = model.apply({"params": params}, batch[:, :-1], deterministic=deterministic,
                         rngs={"dropout": rng})
    targets = batch[:, 1:]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = jnp.argmax(logits, -1) == targets
    sums = {"loss": losses.sum(), "correct": correct.sum(), "count": jnp.float32(losses.size)}
    return losses.mean(), sums

  @staticmethod
  def summarize(sums: dict, prefix: str) -> dict:
    loss = float(sums["loss"] / sums["count"])
    return {f"{prefix}/loss": loss, f"{prefix}/accuracy": float(sums["correct"] / sums["count"]),
            f"{prefix}/perplexity": math.exp(min(loss, 50.0)),
            f"{prefix}/bits_per_char": loss / math.log(2)}

  def sample(self, model, params, rng) -> str:
    """A continuation of config.sample.prompt (the demo at the end of training)."""
    cfg = self.config.sample
    prompt = self.tokenizer.encode(cfg.prompt)[None]
    limit = model.max_len - prompt.shape[1]
    tokens = models.generate(model, params, prompt, max_new_tokens=min(cfg.max_new_tokens,
                                                                          limit),
                             rng=rng, temperature=cfg.temperature, top_k=cfg.top_k or None)
    return cfg.prompt + self.tokenizer.decode(np.asarray(tokens[0]))


TASKS = {"lm": LanguageModelTask}


def get(config):
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; valid tasks: {', '.join(sorted(TASKS))}.")
  return TASKS[config.task](config)
