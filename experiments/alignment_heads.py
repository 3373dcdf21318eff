r"""Choose a speech model's alignment heads (word timestamps) from speech whose word times
are known, and measure word timestamps against them.

    python -m experiments.alignment_heads --workdir=runs/asr --split=validation --write
    python -m experiments.alignment_heads --workdir=runs/asr --split=test     # measure only

Reads the workdir's dataset (kjv_speech: festival's voices give every word's start and end),
times each word of each example's transcript with every decoder head alone
(`whisper_alignment.alignment_head_errors`), and prints the heads by their mean absolute
error of word starts. `--write` keeps the best `--heads` in the workdir's tokenizer
(generation_config.json's alignment_heads: what experiments.transcribe --timestamps=word and
an export use). Then it reports the word-start error of the workdir's alignment heads (or
the default, the decoder's second half) on the split.
"""

import sys

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run: the notebook imports this module)."""
  flags.DEFINE_string("workdir", None, "A training workdir of a Whisper.", required=True)
  flags.DEFINE_string("split", "validation", "The dataset split to measure on.")
  flags.DEFINE_integer("examples", 48, "Examples with word times to use.")
  flags.DEFINE_integer("heads", 2, "How many of the best heads --write keeps.")
  flags.DEFINE_bool("write", False, "Keep the best heads in the workdir's tokenizer.")


def timed_examples(task, split: str, count: int, window: int, max_tokens: int) -> list:
  """[(features [1, window, n_mels], audio frames, transcript tokens (at most
  `max_tokens`), [(word, start, end)])] of the first `count` examples of `split` that carry
  word times."""
  from attention_jax.data import audio, pipeline  # pylint: disable=import-outside-toplevel
  from attention_jax.training.tasks import asr  # pylint: disable=import-outside-toplevel
  cfg = task.config.dataset
  source = pipeline.data_source(cfg.name, split, cfg.data_dir)
  examples = []
  for i in range(len(source)):
    example = source[i]
    words = pipeline.as_text(example["words"]).split()
    if not words:
      continue
    waveform = audio.decode_audio(example["flac"])
    features = audio.recording_features(waveform, window_seconds=window / 100)[None, :window]
    reference = [(w, float(s), float(e)) for w, (s, e) in zip(words, example["word_times"])]
    examples.append((features, min(len(waveform) // 160, window),
                     task.tokenizer.encode(asr.transcript(example["text"]))[:max_tokens],
                     reference))
    if len(examples) == count:
      break
  return examples


def word_start_error(model, params, tokenizer, examples, heads) -> float:
  """Mean absolute error (s) of word starts timed with `heads` (None: the default)."""
  from attention_jax.models import whisper_alignment  # pylint: disable=import-outside-toplevel
  errors = []
  for features, frames, tokens, reference in examples:
    timings = whisper_alignment.word_timings(model, params, tokenizer, features, tokens,
                                             frames=frames, alignment_heads=heads)
    errors += [abs(h - r) for h, r in whisper_alignment.matched_starts(timings, reference)]
  return float(np.mean(errors))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from attention_jax.models import whisper_alignment  # pylint: disable=import-outside-toplevel
  from attention_jax.data import tokenizers  # pylint: disable=import-outside-toplevel
  from attention_jax.training import workdir  # pylint: disable=import-outside-toplevel
  try:
    _, task, model, params, step = workdir.load(FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  tokenizer = task.tokenizer
  if not hasattr(tokenizer, "alignment_heads"):
    raise app.UsageError(f"{FLAGS.workdir} is not a speech model's workdir (no Whisper "
                         "tokenizer).")
  window = 2 * model.config.max_source_positions
  room = model.config.max_len - len(tokenizer.prompt()) - 1  # the decoder's positions
  examples = timed_examples(task, FLAGS.split, FLAGS.examples, window, room)
  if not examples:
    raise app.UsageError(f"the {FLAGS.split} split has no examples with word times.")
  print(f"step {step}: {len(examples)} examples of {FLAGS.split} with word times",
        file=sys.stderr)
  if FLAGS.write:
    errors = whisper_alignment.alignment_head_errors(model, params, tokenizer, examples)
    ranked = sorted(errors, key=errors.get)
    print("| decoder layer, head | word-start error (s) |\n|---|---|")
    for head in ranked:
      print(f"| {head[0]}, {head[1]} | {errors[head]:.3f} |")
    tokenizer.alignment_heads = tuple(ranked[:FLAGS.heads])
    tokenizers.save(tokenizer, FLAGS.workdir)
    print(f"kept alignment heads {list(tokenizer.alignment_heads)} in the workdir's tokenizer")
  default = word_start_error(model, params, tokenizer, examples,
                             whisper_alignment.default_alignment_heads(model))
  chosen = word_start_error(model, params, tokenizer, examples, tokenizer.alignment_heads)
  print(f"word-start error on {FLAGS.split}: {chosen:.3f} s with the workdir's heads "
        f"{list(tokenizer.alignment_heads or [])}, {default:.3f} s with the default (the "
        "decoder's second half)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
