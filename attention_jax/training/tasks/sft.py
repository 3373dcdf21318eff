"""Supervised instruction fine-tuning (SFT) of a causal LM on chat conversations."""

from __future__ import annotations

import os

import grain
import jax.numpy as jnp
import numpy as np

from attention_jax import models, pretrained
from attention_jax.data import chat as chat_data
from attention_jax.data import tokenizers
from attention_jax.pretrained import ChatTokenizer
from attention_jax.training import finetune
from attention_jax.training.tasks.base import (Task, model_options, packed_next_token_sums,
                                               summarize_tokens)


def _no_chat_tokenizer():
  raise ValueError("this task needs a tokenizer with a chat template: set config.init_from to "
                   "a Hugging Face checkpoint directory with tokenizer.json and a chat template "
                   "(tokenizer_config.json or chat_template.jinja), or to a workdir that has "
                   "one.")


class SftTask(Task):
  """Instruction fine-tuning of a causal LM (supervised): conversations from JSONL rendered
  with the base checkpoint's chat template, several packed per row (`dataset.seq_len` + 1
  tokens) with segment ids and positions restarting per conversation, and the loss on the
  assistant's tokens only (the prompt is context, not a target)."""
  unit = "tokens"

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None):
    super().__init__(config, workdir, base)
    self.seq_len = config.dataset.seq_len
    base_tokenizer = base.tokenizer if base else None
    self.tokenizer = tokenizers.load_or_make(
        workdir, _no_chat_tokenizer,
        base_tokenizer if isinstance(base_tokenizer, ChatTokenizer) else None)
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
                             stop_tokens=self.tokenizer.stop_ids)
    reply = [int(t) for t in np.asarray(tokens[0]) if t not in self.tokenizer.stop_ids]
    return f"user: {cfg.prompt}\nassistant: {self.tokenizer.decode(reply)}"
