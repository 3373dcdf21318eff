"""Speech recognition: spoken audio -> its transcript, with Whisper's encoder-decoder, scored
by WER and CER after Whisper's English normalisation (training.wer)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from attention_jax import models
from attention_jax.data import audio, pipeline, tokenizers
from attention_jax.models import whisper_decoding
from attention_jax.training import finetune, wer
from attention_jax.training.tasks.base import (ExampleTask, cross_entropy_sums, model_options,
                                               summarize_tokens, weighted)


def transcript(text) -> str:
  """A transcript as Whisper's decoder writes it: one leading space, then the text."""
  return " " + pipeline.as_text(text).strip()


class AsrTask(ExampleTask):
  """Examples {"flac": FLAC bytes, "text"} (kjv_speech) become log-mel features of a
  window of `config.dataset.max_seconds` (the audio cut there, silence after, as Whisper
  pads) and the decoder's tokens: Whisper's prompt (<|startoftranscript|><|en|>
  <|transcribe|><|notimestamps|>), the transcript, <|endoftext|>. The tokenizer is a
  Whisper tokenizer: trained here (a byte-level BPE with Whisper's special tokens,
  `tokenizers.train_whisper_tokenizer`) or a Whisper checkpoint's (config.init_from). The
  loss counts the transcript and the end. Evaluation adds WER and CER of greedy
  transcripts."""
  decodes = True

  def __init__(self, config, workdir: str | None = None, base: finetune.Base | None = None):
    super().__init__(config, workdir, base)
    cfg = config.dataset
    self.tokenizer = tokenizers.load_or_make(workdir, lambda: tokenizers.train_whisper_tokenizer(
        [transcript(t) for t in pipeline.texts(cfg.name, "train", cfg.data_dir, ("text",))],
        cfg.vocab_size, languages=(cfg.language,)), base.tokenizer if base else None)
    tok = self.tokenizer
    if not hasattr(tok, "prompt"):
      raise ValueError(f"the asr task needs a Whisper tokenizer (its prompt and end token); "
                       f"config.init_from={config.init_from!r} has a "
                       f"{type(tok).__name__}.")
    self.prompt = tok.prompt(cfg.language, "transcribe", timestamps=False)
    self.eos_id = self.pad_id = tok.end_id
    # CTC's blank: <|startoflm|>, a token no decoding uses
    self.blank_id = tok.to_hf().token_to_id("<|startoflm|>")
    self.ctc_weight = float(config.get("ctc_weight", 0.0))
    if self.ctc_weight and self.blank_id is None:
      raise ValueError("ctc_weight needs a <|startoflm|> token for CTC's blank; this "
                       "tokenizer has none.")
    if len(self.prompt) + 2 > cfg.seq_len:
      raise ValueError(f"dataset.seq_len={cfg.seq_len} leaves no room for a transcript after "
                       f"the {len(self.prompt)}-token prompt.")

  def features(self, example) -> np.ndarray:
    """float32 [frames, n_mels]: the example's audio cut or padded to the window."""
    cfg = self.config.dataset
    samples = round(cfg.max_seconds * audio.SAMPLE_RATE)
    waveform = audio.decode_audio(example["flac"])[:samples]
    return audio.log_mel_spectrogram(waveform, n_mels=self._n_mels(), pad=True,
                                     window_seconds=cfg.max_seconds)

  def _n_mels(self) -> int:
    fields = model_options(self.config, self.base)
    return fields.get("n_mels", 80)

  def _encode(self, example):
    length = self.config.dataset.seq_len
    ids = (self.prompt + self.tokenizer.encode(transcript(example["text"])))[:length]
    ids.append(self.eos_id)
    tokens_in, _ = tokenizers.pad(ids[:-1], length, self.pad_id)
    tokens_out, mask = tokenizers.pad(ids[1:], length, self.pad_id)
    mask[:len(self.prompt) - 1] = 0  # the prompt's own tokens are given, not predicted
    labels, label_mask = tokenizers.pad(ids[len(self.prompt):-1], length, self.pad_id)
    return {"features": self.features(example), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "token_mask": mask, "ctc_labels": labels,
            "ctc_label_paddings": (1 - label_mask).astype(np.float32)}

  def model(self, **overrides):
    cfg = self.config.dataset
    options = {"max_len": cfg.seq_len, "max_source_positions": round(cfg.max_seconds * 50),
               **model_options(self.config, self.base), **overrides,
               "vocab_size": self.tokenizer.vocab_size}
    return models.create(self.config.model.preset, **options)

  def init_inputs(self):
    cfg = self.config.dataset
    frames = round(cfg.max_seconds * 100)
    return (jnp.zeros((1, frames, self._n_mels()), jnp.float32),
            jnp.zeros((1, cfg.seq_len), jnp.int32))

  def loss(self, model, params, batch, rng, deterministic: bool):
    """Cross-entropy of the transcript; with `config.ctc_weight` = w, the training loss is
    (1 - w) · that + w · CTC (per label token) of the transcript against the encoder's
    output through the tied token table: a second, alignment-forcing path to the same
    encoder (hybrid CTC/attention training), no new parameters, nothing changed at
    inference. Evaluation sums stay the decoder's."""
    apply = lambda *args, **kwargs: model.apply({"params": params}, *args, **kwargs)
    encoded = apply(batch["features"], deterministic=deterministic, rngs={"dropout": rng},
                    method=model.encode)
    logits = apply(batch["tokens_in"], encoded, deterministic=deterministic,
                   rngs={"dropout": rng}, method=model.decode_logits)
    mean, sums = cross_entropy_sums(logits, batch["tokens_out"],
                                    weighted(batch["token_mask"], batch))
    if not self.ctc_weight or deterministic:  # evaluation: the decoder's loss alone
      return mean, sums
    frames = apply(encoded, method=model.token_logits)
    ctc = optax.ctc_loss(frames, jnp.zeros(frames.shape[:2]), batch["ctc_labels"],
                         batch["ctc_label_paddings"], blank_id=self.blank_id)
    labels = jnp.maximum((1 - batch["ctc_label_paddings"]).sum(-1), 1.0)
    return (1 - self.ctc_weight) * mean + self.ctc_weight * jnp.mean(ctc / labels), sums

  @staticmethod
  def summarize(sums: dict, prefix: str) -> dict:
    return summarize_tokens(sums, prefix)  # WER and CER come from decode_metrics

  def transcribe(self, model, params, examples) -> list[str]:
    """Greedy transcripts of dataset examples, `config.batch_size` at a time (the last
    batch filled with copies, so that one compiled decoder serves all)."""
    batch = self.config.batch_size
    max_new = self.config.dataset.seq_len - len(self.prompt)
    prompt = np.tile(np.array(self.prompt, np.int32), (batch, 1))
    texts = []
    for start in range(0, len(examples), batch):
      chunk = examples[start:start + batch]
      features = np.stack([self.features(e) for e in chunk + chunk[-1:] * (batch - len(chunk))])
      tokens = whisper_decoding.greedy(model, params, features, prompt, max_new_tokens=max_new,
                                       eos_id=self.eos_id, pad_id=self.pad_id)
      texts += [self.tokenizer.decode(row) for row in np.asarray(tokens)[:len(chunk)]]
    return texts

  def decode_metrics(self, model, params, prefix: str = "eval") -> dict:
    """{prefix}/wer and {prefix}/cer of greedy transcripts of the first
    `config.eval_wer_examples` examples of the evaluation split."""
    source = self.sources[self.config.dataset.eval_split]
    examples = [source[i] for i in range(min(self.config.eval_wer_examples, len(source)))]
    rates = wer.error_rates(self.transcribe(model, params, examples),
                            [pipeline.as_text(e["text"]) for e in examples])
    return {f"{prefix}/{name}": value for name, value in rates.items()}
