r"""Transcribe audio files with a Whisper checkpoint.

    python -m experiments.transcribe --init_from=checkpoints/whisper-tiny verse.wav more.flac
    python -m experiments.transcribe --init_from=DIR --language=de --task=translate \
        --format=json talk.wav > talk.json

`--init_from` is a Hugging Face Whisper directory (config.json, safetensors weights,
tokenizer.json, generation_config.json). Each file (WAV, FLAC) is read at 16 kHz mono, turned
into Whisper's log-mel features and decoded greedily from <|startoftranscript|><|language|>
<|task|><|notimestamps|>. Files up to 30 s; longer audio, timestamps and beam search are to
come. Progress goes to stderr, transcripts to stdout.
"""

import json
import sys
import time

from absl import app, flags, logging

_INIT_FROM = flags.DEFINE_string("init_from", None, "A Hugging Face Whisper checkpoint "
                                 "directory.", required=True)
_LANGUAGE = flags.DEFINE_string("language", "en", "The spoken language's code (en, de, ...); "
                                "'none' for an English-only model.")
_TASK = flags.DEFINE_enum("task", "transcribe", ["transcribe", "translate"],
                          "Transcribe, or translate into English.")
_FORMAT = flags.DEFINE_enum("format", "txt", ["txt", "json"], "One transcript per line, or a "
                            "JSON list of {file, seconds, text}.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Tokens per file (default: as many "
                                "as the decoder's positions allow).")
_KERNEL = flags.DEFINE_string("kernel", "auto", "Attention kernel.")


def transcribe_files(model, params, tokenizer, paths, *, language, task, max_new_tokens=None,
                     log=sys.stderr) -> list[dict]:
  """[{"file", "seconds" (of audio), "text"}] for each audio file, one at a time, with a
  progress line per file on `log`."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from attention_jax.data import audio  # pylint: disable=import-outside-toplevel
  from attention_jax.models import whisper_decoding  # pylint: disable=import-outside-toplevel
  results = []
  for i, path in enumerate(paths):
    start = time.perf_counter()
    waveform = audio.read_audio(path)
    seconds = waveform.size / audio.SAMPLE_RATE
    features = audio.log_mel_spectrogram(waveform, n_mels=model.config.n_mels,
                                         window_seconds=model.window_seconds)
    text = whisper_decoding.transcribe(model, params, tokenizer, jnp.asarray(features)[None],
                                       language=language, task=task,
                                       max_new_tokens=max_new_tokens)[0]
    results.append({"file": path, "seconds": round(seconds, 3), "text": text})
    print(f"[{i + 1}/{len(paths)}] {path}: {seconds:.1f} s of audio in "
          f"{time.perf_counter() - start:.1f} s", file=log, flush=True)
  return results


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("name one or more audio files (WAV or FLAC) after the flags.")
  logging.set_verbosity(logging.WARNING)
  from attention_jax import pretrained  # pylint: disable=import-outside-toplevel
  from attention_jax.models import Whisper  # pylint: disable=import-outside-toplevel
  try:
    model, params, tokenizer = pretrained.load(_INIT_FROM.value, kernel=_KERNEL.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  if not isinstance(model, Whisper):
    raise app.UsageError(f"{_INIT_FROM.value} holds a {type(model).__name__}, not a Whisper.")
  if tokenizer is None:
    raise app.UsageError(f"{_INIT_FROM.value} has no tokenizer.json; a transcript needs one.")
  language = None if _LANGUAGE.value.lower() == "none" else _LANGUAGE.value
  try:
    results = transcribe_files(model, params, tokenizer, paths, language=language,
                               task=_TASK.value, max_new_tokens=_MAX_NEW.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  if _FORMAT.value == "json":
    print(json.dumps(results, indent=2, ensure_ascii=False))
  else:
    for result in results:
      print(result["text"])


if __name__ == "__main__":
  app.run(main)
