"""Translation: source -> target sentences with the encoder-decoder, scored by BLEU."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from attention_jax import models
from attention_jax.data import pipeline, tokenizers
from attention_jax.training import bleu, finetune
from attention_jax.training.tasks.base import (ExampleTask, cross_entropy_sums, model_options,
                                               summarize_tokens, weighted)


class TranslationTask(ExampleTask):
  """Source -> target sentences with the encoder-decoder over a joint BPE vocabulary;
  evaluation adds corpus BLEU of beam-search (or greedy) translations."""
  decodes = True

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None):
    super().__init__(config, workdir, base)
    cfg = config.dataset
    self.tokenizer = tokenizers.load_or_make(workdir, lambda: tokenizers.SubwordTokenizer.train(
        pipeline.texts(cfg.name, "train", cfg.data_dir, (cfg.source, cfg.target)),
        cfg.vocab_size, "bpe"), base.tokenizer if base else None)

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
