r"""Transcribe audio files of any length with a Whisper checkpoint.

    python -m experiments.transcribe --init_from=checkpoints/whisper-tiny verse.wav more.flac
    python -m experiments.transcribe --init_from=DIR --timestamps=segment --format=srt talk.wav
    python -m experiments.transcribe --init_from=DIR --timestamps=word --format=json talk.wav
    python -m experiments.transcribe --init_from=runs/asr --timestamps=word \
        --notimestamp_tokens --format=json verse.wav     # a model trained here
    python -m experiments.transcribe --init_from=DIR --chunked --batch_size=16 long.flac
    python -m experiments.transcribe --init_from=DIR --language=de --task=translate \
        --format=json talk.wav > talk.json

`--init_from` is a Hugging Face Whisper directory (config.json, safetensors weights,
tokenizer.json, generation_config.json) or a training workdir of one (`--checkpoint`:
latest, best or a step), whose windows are as long as it was trained on. Each file (WAV,
FLAC) is read at 16 kHz mono, turned into Whisper's log-mel features and transcribed window
by window (30 s for Whisper's checkpoints), Whisper's long-form way
(`models.whisper_decoding.transcribe_long`): greedy (or `--beam_size` beams), falling back
to higher temperatures when a window's text loops or is improbable, skipping windows that
are probably silent; with timestamps, each window starts where the last complete segment
ended; with word timestamps, each word's times come from the alignment heads'
cross-attention (`models.whisper_alignment`). A window past a recording's end is padded
with zeros for a Hugging Face checkpoint (as Whisper does), with the log-mel of silence for
a workdir (as the `asr` task trains). Progress (files and windows) goes to stderr,
transcripts to stdout: txt (one line per file), srt or vtt (subtitles; one file's cues
after another's), or json (each file's text, segments and words). `--chunked` trades all
that for throughput: overlapping windows decoded `--batch_size` at a time, their tokens
merged where they overlap (text only).
"""

import json
import sys
import time

import numpy as np

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags (defined only when run, so that importing this module beside
  the other entry points defines nothing twice)."""
  flags.DEFINE_string("init_from", None, "A Hugging Face Whisper checkpoint directory, or a "
                      "training workdir of a Whisper (configs/whisper_kjv_speech.py).",
                      required=True)
  flags.DEFINE_string("checkpoint", "latest", "A workdir's 'latest', 'best' or a step.")
  flags.DEFINE_string("language", "en", "The spoken language's code (en, de, ...); 'none' "
                      "for an English-only model.")
  flags.DEFINE_enum("task", "transcribe", ["transcribe", "translate"],
                    "Transcribe, or translate into English.")
  flags.DEFINE_enum("timestamps", "none", ["none", "segment", "word"],
                    "segment: decode with timestamp tokens (segments with times, windows "
                    "that seek by them); word: also each word's times (in json), from the "
                    "cross-attention; none: each window one segment.")
  flags.DEFINE_bool("timestamp_tokens", True, "Decode with Whisper's timestamp tokens for "
                    "--timestamps=segment or word; --notimestamp_tokens for a model trained "
                    "without them (configs/whisper_kjv_speech.py): each window is then one "
                    "segment, and word times still come from the cross-attention.")
  flags.DEFINE_enum("format", "txt", ["txt", "srt", "vtt", "json"],
                    "One transcript per line, subtitles, or a JSON list of {file, seconds, "
                    "text, segments}.")
  flags.DEFINE_list("temperatures", ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"],
                    "Temperatures tried in turn while a window's text loops or is "
                    "improbable (0: greedy).")
  flags.DEFINE_string("compression_ratio_threshold", "2.4", "Above it a window's text is a "
                      "loop ('none': never).")
  flags.DEFINE_string("logprob_threshold", "-1.0", "Below this average log-probability a "
                      "window's text is improbable ('none': never).")
  flags.DEFINE_string("no_speech_threshold", "0.6", "Above this <|nospeech|> probability an "
                      "improbable window is silence, skipped ('none': never).")
  flags.DEFINE_integer("max_new_tokens", None, "Tokens per window (default: as many as the "
                       "decoder's positions allow).")
  flags.DEFINE_integer("beam_size", 1, "Beams at temperature 0 (1: greedy).", lower_bound=1)
  flags.DEFINE_bool("chunked", False, "Throughput instead: overlapping windows decoded "
                    "--batch_size at a time and merged where they overlap (no timestamps, no "
                    "fallback; txt or json).")
  flags.DEFINE_integer("batch_size", 8, "Windows per batch with --chunked.", lower_bound=1)
  flags.DEFINE_float("stride", None, "Seconds each --chunked window overlaps its neighbour "
                     "by, on each side (default a sixth of a window).")
  flags.DEFINE_integer("seed", 0, "Sampling seed (the fallback temperatures).")
  flags.DEFINE_string("kernel", "auto", "Attention kernel.")


def _threshold(name: str) -> float | None:
  value = getattr(FLAGS, name)
  if value.lower() == "none":
    return None
  try:
    return float(value)
  except ValueError:
    raise app.UsageError(f"--{name} must be a number or 'none', got {value!r}.") from None


def transcribe_chunked(model, params, tokenizer, paths, *, stride=None, log=sys.stderr,
                       **options) -> list[dict]:
  """[{"file", "seconds", "text", "segments": []}] of each file transcribed in overlapping
  windows, batched (`whisper_decoding.transcribe_chunks`; `options` go there)."""
  from attention_jax.data import audio  # pylint: disable=import-outside-toplevel
  from attention_jax.models import whisper_decoding  # pylint: disable=import-outside-toplevel
  results = []
  for i, path in enumerate(paths):
    start = time.perf_counter()
    waveform = audio.read_audio(path)
    seconds = waveform.size / audio.SAMPLE_RATE
    chunks = audio.overlapping_chunks(waveform, model.window_seconds, stride)
    features = np.stack([audio.log_mel_spectrogram(c, n_mels=model.config.n_mels,
                                                   window_seconds=model.window_seconds)
                         for c in chunks])
    progress = lambda done, total, i=i, path=path: print(
        f"\r[{i + 1}/{len(paths)}] {path}: {done}/{total} windows", end="", file=log,
        flush=True)
    text = whisper_decoding.transcribe_chunks(model, params, tokenizer, features,
                                              progress=progress, **options)
    results.append({"file": path, "seconds": round(seconds, 3), "text": text, "segments": []})
    print(f"\r[{i + 1}/{len(paths)}] {path}: {seconds:.1f} s of audio in "
          f"{time.perf_counter() - start:.1f} s", file=log, flush=True)
  return results


def transcribe_files(model, params, tokenizer, paths, *, log=sys.stderr, **options
                     ) -> list[dict]:
  """[{"file", "seconds" (of audio), "text", "segments": [{"start", "end", "text", and with
  word timestamps "words": [{"word", "start", "end", "probability"}]}]}] for
  each audio file, one at a time, with a progress line per window and per file on `log`.
  `options` go to whisper_decoding.transcribe_long."""
  from attention_jax.data import audio  # pylint: disable=import-outside-toplevel
  from attention_jax.models import whisper_decoding  # pylint: disable=import-outside-toplevel
  results = []
  for i, path in enumerate(paths):
    start = time.perf_counter()
    waveform = audio.read_audio(path)
    seconds = waveform.size / audio.SAMPLE_RATE
    features = audio.recording_features(waveform, n_mels=model.config.n_mels,
                                        window_seconds=model.window_seconds)
    progress = lambda done, total, i=i, path=path: print(
        f"\r[{i + 1}/{len(paths)}] {path}: {done:.1f}/{total:.1f} s", end="", file=log,
        flush=True)
    segments = whisper_decoding.transcribe_long(model, params, tokenizer, features,
                                                progress=progress, **options)
    results.append({"file": path, "seconds": round(seconds, 3),
                    "text": " ".join(s.text for s in segments),
                    "segments": [_segment_json(s) for s in segments]})
    print(f"\r[{i + 1}/{len(paths)}] {path}: {seconds:.1f} s of audio in "
          f"{time.perf_counter() - start:.1f} s", file=log, flush=True)
  return results


def _segment_json(segment) -> dict:
  out = {"start": round(segment.start, 3), "end": round(segment.end, 3), "text": segment.text}
  if segment.words:
    out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3),
                     "probability": round(w.probability, 4)} for w in segment.words]
  return out


def _clock(seconds: float, separator: str) -> str:
  milliseconds = round(seconds * 1000)
  hours, milliseconds = divmod(milliseconds, 3_600_000)
  minutes, milliseconds = divmod(milliseconds, 60_000)
  return f"{hours:02d}:{minutes:02d}:{milliseconds // 1000:02d}{separator}{milliseconds % 1000:03d}"


def subtitles(results: list[dict], kind: str) -> str:
  """SubRip ("srt": numbered cues, 00:00:01,000) or WebVTT ("vtt": a header, 00:00:01.000)
  of every file's segments, one file after another."""
  lines, cue = ["WEBVTT", ""] if kind == "vtt" else [], 0
  separator = "." if kind == "vtt" else ","
  for result in results:
    for segment in result["segments"]:
      cue += 1
      if kind == "srt":
        lines.append(str(cue))
      lines += [f"{_clock(segment['start'], separator)} --> "
                f"{_clock(segment['end'], separator)}", segment["text"], ""]
  return "\n".join(lines)


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError("name one or more audio files (WAV or FLAC) after the flags.")
  logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=import-outside-toplevel
  from attention_jax.models import Whisper  # pylint: disable=import-outside-toplevel
  from attention_jax.training import workdir  # pylint: disable=import-outside-toplevel
  try:
    temperatures = tuple(float(t) for t in FLAGS.temperatures)
  except ValueError:
    raise app.UsageError(f"--temperatures must be numbers, got {FLAGS.temperatures}.") from None
  options = dict(temperatures=temperatures,
                 timestamps=FLAGS.timestamps != "none" and FLAGS.timestamp_tokens,
                 word_timestamps=FLAGS.timestamps == "word",
                 compression_ratio_threshold=_threshold("compression_ratio_threshold"),
                 logprob_threshold=_threshold("logprob_threshold"),
                 no_speech_threshold=_threshold("no_speech_threshold"),
                 max_new_tokens=FLAGS.max_new_tokens, beam_size=FLAGS.beam_size,
                 rng=jax.random.key(FLAGS.seed), task=FLAGS.task,
                 language=None if FLAGS.language.lower() == "none" else FLAGS.language)
  try:
    model, params, tokenizer = workdir.load_model(FLAGS.init_from, FLAGS.checkpoint,
                                                  FLAGS.kernel)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  if not isinstance(model, Whisper):
    raise app.UsageError(f"{FLAGS.init_from} holds a {type(model).__name__}, not a Whisper.")
  if tokenizer is None:
    raise app.UsageError(f"{FLAGS.init_from} has no tokenizer.json; a transcript needs one.")
  # A model trained here saw the silence after each verse as log-mel of silence, not zeros.
  options["pad_with_silence"] = workdir.is_workdir(FLAGS.init_from)
  if FLAGS.chunked and (FLAGS.format in ("srt", "vtt") or FLAGS.timestamps != "none"):
    raise app.UsageError("--chunked gives text without times: use --format=txt or json and "
                         "--timestamps=none, or leave --chunked out.")
  try:
    if FLAGS.chunked:
      results = transcribe_chunked(
          model, params, tokenizer, paths, stride=FLAGS.stride, language=options["language"],
          task=options["task"], batch_size=FLAGS.batch_size, beam_size=FLAGS.beam_size,
          max_new_tokens=FLAGS.max_new_tokens)
    else:
      results = transcribe_files(model, params, tokenizer, paths, **options)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.format == "json":
    print(json.dumps(results, indent=2, ensure_ascii=False))
  elif FLAGS.format in ("srt", "vtt"):
    print(subtitles(results, FLAGS.format))
  else:
    for result in results:
      print(result["text"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
