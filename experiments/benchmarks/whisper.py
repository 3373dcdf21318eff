r"""Transcription speed: our Whisper vs transformers' PyTorch Whisper, in one process.

    python -m experiments.benchmarks.whisper                          # whisper-tiny, 30 s
    python -m experiments.benchmarks.whisper --preset=whisper-base --new_tokens=96
    python -m experiments.benchmarks.whisper --preset=whisper-test-tiny --rounds=1   # smoke

Random weights of the preset's shape, exported by us and loaded by transformers, so both run
the same model on the same 30 s window (log-mel features of synthesised noise): the greedy
tokens must be equal (checked). For each library: the encoder's seconds per window, the
decoder's seconds per token (a greedy decoding of `--new_tokens` tokens, its encoder time
taken off), and seconds of audio transcribed per second for a window decoded to
`--new_tokens` tokens; the medians of `--rounds` runs with the libraries interleaved after a
warm-up (our compilation). Needs torch and transformers (the test extras).
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
from absl import app, flags, logging

from attention_jax import models, pretrained
from attention_jax.models import whisper_decoding
from experiments.benchmarks import harness

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run, so that importing this module beside
  other benchmarks defines nothing twice)."""
  flags.DEFINE_string("preset", "whisper-tiny", "A Whisper preset.")
  flags.DEFINE_integer("new_tokens", 64, "Tokens decoded per window.")
  flags.DEFINE_integer("rounds", 5, "Interleaved runs per library.")
  flags.DEFINE_string("kernel", "auto", "Our attention kernel.")
  flags.DEFINE_string("results_dir", "", "Write the table to this directory (docs/results) "
                      "with its date, machine and commit.")


PROMPT = (50258, 50259, 50360, 50364)  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>


def _timed(fn):
  out = []
  return harness.timed(lambda: out.append(fn())), out[0]


def measure(preset: str, new_tokens: int, rounds: int, kernel: str = "auto",
            log=print) -> dict:
  """{"ours"|"theirs": {"encoder_s", "decoder_s_per_token", "audio_s_per_s"}, "same_tokens",
  "window_s"}: both libraries on one window, interleaved."""
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count())
  model = models.create(preset, kernel=kernel)
  c = model.config
  params = jax.jit(lambda: model.init(jax.random.key(0), *model.example_inputs())["params"])()
  directory = tempfile.mkdtemp(prefix="whisper_bench_")
  pretrained.export(model, params, directory)
  hf = transformers.WhisperForConditionalGeneration.from_pretrained(directory).eval()
  frames = 2 * c.max_source_positions
  features = np.random.default_rng(0).standard_normal((1, frames, c.n_mels)).astype(np.float32)
  prompt = np.array([PROMPT if c.vocab_size > max(PROMPT) else (1, 2, 3, 4)], np.int32)
  end = c.vocab_size - 1 if c.vocab_size <= max(PROMPT) else 50257
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
  ids, input_features = torch.tensor(prompt, dtype=torch.long), torch.tensor(
      features.transpose(0, 2, 1))

  def ours_encoder():
    return jax.block_until_ready(encode(params, features))

  def ours_transcribe():  # `end` suppressed: exactly new_tokens tokens, as min_new_tokens
    return np.asarray(whisper_decoding.greedy(
        model, params, features, prompt, max_new_tokens=new_tokens, eos_id=end,
        suppress=(end,), pad_id=end))[0]

  def theirs_encoder():
    with torch.no_grad():
      return hf.model.encoder(input_features).last_hidden_state

  def theirs_transcribe():
    with torch.no_grad():
      out = hf.generate(input_features=input_features, decoder_input_ids=ids,
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        num_beams=1, suppress_tokens=[], begin_suppress_tokens=[],
                        eos_token_id=end, pad_token_id=end)
    return out[0, -new_tokens:].numpy()

  runs = {"ours encoder": ours_encoder, "theirs encoder": theirs_encoder,
          "ours transcribe": ours_transcribe, "theirs transcribe": theirs_transcribe}
  samples = harness.interleaved({name: lambda run=run: _timed(run) for name, run in
                                 runs.items()}, rounds,
                                after_round=lambda r: log(f"round {r + 1}/{rounds}"))
  seconds = {name: harness.median([s for s, _ in values]) for name, values in samples.items()}
  same = np.array_equal(samples["ours transcribe"][-1][1], samples["theirs transcribe"][-1][1])
  window = frames / 100
  result = {"same_tokens": bool(same), "window_s": window}
  for who in ("ours", "theirs"):
    encoder, total = seconds[f"{who} encoder"], seconds[f"{who} transcribe"]
    result[who] = {"encoder_s": encoder,
                   "decoder_s_per_token": max(total - encoder, 0.0) / new_tokens,
                   "audio_s_per_s": window / total}
  return result


def table(result: dict, preset: str, new_tokens: int) -> str:
  ours, theirs = result["ours"], result["theirs"]
  rows = [f"{preset}, one {result['window_s']:.0f} s window decoded greedily to {new_tokens} "
          f"tokens, batch 1, float32; the same greedy tokens: {result['same_tokens']}", "",
          "| | encoder s / window | decoder ms / token | audio s transcribed / s |",
          "|---|---|---|---|"]
  for name, r in (("ours (JAX)", ours), ("transformers (PyTorch)", theirs)):
    rows.append(f"| {name} | {r['encoder_s']:.3f} | {1000 * r['decoder_s_per_token']:.1f} | "
                f"{r['audio_s_per_s']:.1f} |")
  rows.append(f"| ours / theirs (speed) | {theirs['encoder_s'] / ours['encoder_s']:.2f}x | "
              f"{theirs['decoder_s_per_token'] / max(ours['decoder_s_per_token'], 1e-9):.2f}x "
              f"| {ours['audio_s_per_s'] / theirs['audio_s_per_s']:.2f}x |")
  return "\n".join(rows)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  result = measure(FLAGS.preset, FLAGS.new_tokens, FLAGS.rounds, FLAGS.kernel)
  text = table(result, FLAGS.preset, FLAGS.new_tokens)
  print(f"{harness.machine()}\n\n{text}")
  if FLAGS.results_dir:
    print(harness.write_result(FLAGS.results_dir, "whisper-transcription-cpu",
                               "Whisper transcription speed: ours vs transformers (CPU)", text))


if __name__ == "__main__":
  define_flags()
  app.run(main)
