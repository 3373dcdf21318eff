"""Sentence embeddings from a pretrained encoder: mean pooling over real tokens, then L2
normalisation (how sentence-transformers trained all-MiniLM-L6-v2)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.models.bert import mean_pool
from attention_jax.pretrained import hub


@functools.lru_cache(maxsize=4)
def _encoder(name: str, kernel: str):
  """(jitted embed function, params, tokenizer), loaded once per (name, kernel)."""
  model, params, tokenizer = hub.load(name, kernel=kernel)
  if tokenizer is None:
    raise ValueError(f"checkpoint {name!r} has no tokenizer.json or vocab.txt to encode with.")

  @jax.jit
  def embed(params, input_ids, attention_mask, token_type_ids):
    hidden = model.apply({"params": params}, input_ids, token_type_ids,
                         attention_mask)["hidden"]
    pooled = mean_pool(hidden.astype(jnp.float32), attention_mask)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

  return embed, params, tokenizer


def _bucket(length: int) -> int:
  """Pads batches to 16, 32, 64, ... tokens so a few compilations serve all lengths."""
  return max(16, 1 << (length - 1).bit_length())


def encode(sentences, name: str = "all-MiniLM-L6-v2", kernel: str = "dot_product",
           batch_size: int = 64, max_length: int | None = None) -> np.ndarray:
  """Unit-length sentence embeddings, float32 [len(sentences), width] (one row each).

  `sentences` is a list of strings (or one string: one row); longer ones are truncated to
  `max_length` tokens (default: the length the model was trained with, 256 for MiniLM).
  """
  if isinstance(sentences, str):
    sentences = [sentences]
  sentences = list(sentences)
  if not all(isinstance(s, str) for s in sentences):
    raise TypeError("encode() takes a string or a list of strings.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  embed, params, tokenizer = _encoder(name, kernel)
  limit = min(max_length or tokenizer.max_length, tokenizer.max_length)
  # Sorting by length keeps padding low; rows go back to the caller's order at the end.
  order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
  rows = []
  for start in range(0, len(order), batch_size):
    texts = [sentences[i] for i in order[start:start + batch_size]]
    batch = tokenizer(texts, max_length=limit)
    extra = min(_bucket(batch["input_ids"].shape[1]), limit) - batch["input_ids"].shape[1]
    batch = {k: np.pad(v, ((0, 0), (0, extra)),
                       constant_values=tokenizer.pad_id if k == "input_ids" else 0)
             for k, v in batch.items()}
    rows.append(np.asarray(embed(params, batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"])))
  out = np.zeros((len(sentences), params["embed"]["token"]["embedding"].shape[-1]),
                 np.float32)
  if rows:
    out[order] = np.concatenate(rows)
  return out
