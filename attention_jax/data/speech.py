"""Speech synthesised offline by three real engines Debian ships, and the `kjv_speech` builder.

    waveform, words = speech.synthesise("In the beginning God created", speech.VOICES["festival/slt"])
    # waveform: float32 [samples] at 16 kHz; words: [(word, start_s, end_s), ...]

Engines (`apt-get install espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts`):
- espeak-ng, formant synthesis, in four accents and speeds;
- flite, CMU's small engine: its voices kal (8 kHz diphones), slt, rms, awb;
- festival with the kal diphone voice and slt's HTS voice: word start and end times from
  its Word relation.

`kjv_speech` speaks the short verses of the King James Bible (at most `MAX_WORDS` words),
split by verse as kjv_text is; each verse is spoken by one of the training voices (rotating,
and espeak-ng at rotating speeds). The voice `HELD_OUT_VOICE` is never heard in training: the
split "test_held_out_voice" is the test verses spoken by it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata

import numpy as np
import tensorflow_datasets as tfds

from attention_jax.data import audio, sword

ENGINE_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite",
                   "festival": "festival festvox-kallpc16k festvox-us-slt-hts"}


@dataclasses.dataclass(frozen=True)
class Voice:
  """One engine's voice: `setting` is espeak-ng's voice name, flite's -voice, or festival's
  voice function; `rate` espeak-ng's words per minute."""
  name: str
  engine: str
  setting: str
  rate: int | None = None


VOICES = {v.name: v for v in (
    Voice("espeak-ng/en-us-140", "espeak-ng", "en-us", 140),
    Voice("espeak-ng/en-us-190", "espeak-ng", "en-us", 190),
    Voice("espeak-ng/en-gb-165", "espeak-ng", "en-gb", 165),
    Voice("espeak-ng/en-029-175", "espeak-ng", "en-029", 175),
    Voice("flite/kal", "flite", "kal"),
    Voice("flite/slt", "flite", "slt"),
    Voice("flite/rms", "flite", "rms"),
    Voice("flite/awb", "flite", "awb"),
    Voice("festival/kal", "festival", "voice_kal_diphone"),
    Voice("festival/slt", "festival", "voice_cmu_us_slt_arctic_hts"),
)}
HELD_OUT_VOICE = "flite/awb"  # a Scottish English male voice, only in test_held_out_voice
TRAINING_VOICES = tuple(name for name in VOICES if name != HELD_OUT_VOICE)
MAX_WORDS = 14  # verses this short (4,757 of 31,169) are spoken


def require_engine(engine: str):
  """Raises with the apt-get command that installs `engine` when it is missing."""
  if not shutil.which(engine):
    raise FileNotFoundError(f"the speech engine {engine} is missing. Install it with: "
                            f"sudo apt-get install {ENGINE_PACKAGES[engine]}")


def _read_wav(path: str) -> np.ndarray:
  import soundfile  # pylint: disable=import-outside-toplevel
  samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
  return audio.resample(samples.mean(axis=1), rate)


def _synthesise_command(text: str, voice: Voice):
  """espeak-ng or flite, one process per text; neither gives word times."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "out.wav")
    command = (["espeak-ng", "-v", voice.setting, "-s", str(voice.rate), "-w", path, text]
               if voice.engine == "espeak-ng" else
               ["flite", "-voice", voice.setting, "-t", text, "-o", path])
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0 or not os.path.exists(path):
      raise RuntimeError(f"{voice.engine} ({voice.setting}) failed on {text!r}: "
                         f"{run.stderr[-500:]}")
    return _read_wav(path), None


def _scheme_string(text: str) -> str:
  return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _synthesise_festival_many(texts: list[str], voice: Voice):
  """Festival started once for many texts: [(waveform, words)]."""
  require_engine("festival")
  with tempfile.TemporaryDirectory() as tmp:
    script = [f"({voice.setting})"]
    for i, text in enumerate(texts):
      wav = os.path.join(tmp, f"{i}.wav")
      script.append(
          f'(set! u (SynthText {_scheme_string(text)}))(utt.save.wave u "{wav}" \'riff)'
          f'(format t "U\\t{i}\\n")(mapcar (lambda (w) (format t "W\\t%s\\t%f\\t%f\\n" '
          "(item.name w) (item.feat w 'word_start) (item.feat w 'word_end))) "
          "(utt.relation.items u 'Word))")
    path = os.path.join(tmp, "say.scm")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(script) + "\n")
    run = subprocess.run(["festival", "--batch", path], capture_output=True, text=True,
                         errors="replace")
    if run.returncode != 0 or "SIOD ERROR" in run.stdout + run.stderr:
      raise RuntimeError(f"festival ({voice.setting}) failed: {(run.stderr or run.stdout)[-500:]}"
                         f"\nIs the voice installed? sudo apt-get install "
                         f"{ENGINE_PACKAGES['festival']}")
    words = {}
    for line in run.stdout.splitlines():
      fields = line.split("\t")
      if fields[0] == "U":
        current = words.setdefault(int(fields[1]), [])
      elif fields[0] == "W" and float(fields[3]) > float(fields[2]):  # skips empty ('s)
        current.append((fields[1], float(fields[2]), float(fields[3])))
    return [(_read_wav(os.path.join(tmp, f"{i}.wav")), words.get(i, []))
            for i in range(len(texts))]


def synthesise_many(texts: list[str], voice: Voice) -> list:
  """[(waveform float32 [samples] at 16 kHz, [(word, start_s, end_s)] or None)] of `texts`
  spoken by `voice` (None: the engine gives no word times)."""
  if voice.engine == "festival":
    return _synthesise_festival_many(texts, voice)
  if voice.engine in ("espeak-ng", "flite"):
    return [_synthesise_command(t, voice) for t in texts]
  raise ValueError(f"unknown engine {voice.engine!r}; valid: {', '.join(ENGINE_PACKAGES)}")


def synthesise(text: str, voice: Voice):
  """(waveform float32 [samples] at 16 kHz, [(word, start_s, end_s)] or None) of `text`."""
  return synthesise_many([text], voice)[0]


# --- the kjv_speech builder -------------------------------------------------------------
def _speakable(text: str) -> str:
  """The verse as the engines get it: ASCII (æ as ae, ’ as ', accents and the pilcrow
  dropped), plain white space, no brackets."""
  for letter, ascii_letters in (("æ", "ae"), ("Æ", "Ae"), ("’", "'"), ("—", ", ")):
    text = text.replace(letter, ascii_letters)
  text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
  return re.sub(r"\s+", " ", re.sub(r"[\[\]]", "", text)).strip()


def speech_plan(max_words: int = MAX_WORDS, limit: int | None = None):
  """{split: [(key, verse, voice name)]}: the short verses split as kjv_text splits them,
  each training/validation/test verse by a training voice in turn, and the test verses again
  by the held-out voice. `limit` keeps the first verses of each split (for tests)."""
  verses = [v for v in sword.read_module("kjv") if v]
  plan = {"train": [], "validation": [], "test": [], "test_held_out_voice": []}
  for i, verse in enumerate(verses):
    if len(verse.split()) > max_words:
      continue
    split = sword.split_of(i)
    voice = TRAINING_VOICES[len(plan[split]) % len(TRAINING_VOICES)]
    plan[split].append((i, verse, voice))
    if split == "test":
      plan["test_held_out_voice"].append((i, verse, HELD_OUT_VOICE))
  return {s: rows[:limit] for s, rows in plan.items()}


def _speak_chunk(rows):
  """Worker: the examples of rows [(key, verse, voice)] of one voice."""
  voice = VOICES[rows[0][2]]
  spoken = synthesise_many([_speakable(verse) for _, verse, _ in rows], voice)
  examples = []
  for (key, verse, name), (waveform, words) in zip(rows, spoken):
    words = words or []
    examples.append((key, {
        "flac": audio.encode_flac(waveform), "text": verse, "voice": name,
        "words": " ".join(w for w, _, _ in words),
        "word_times": np.array([(s, e) for _, s, e in words], np.float32).reshape(-1, 2)}))
  return examples


def _spoken(rows, split: str, chunk: int = 32):
  """Yields (key, example) for `rows`, synthesised by a process pool with a progress line."""
  chunks = []
  for name in dict.fromkeys(voice for _, _, voice in rows):
    mine = [r for r in rows if r[2] == name]
    chunks += [mine[i:i + chunk] for i in range(0, len(mine), chunk)]
  for engine in {VOICES[r[2]].engine for r in rows}:
    require_engine(engine)
  done, started = 0, time.time()
  processes = max(1, min(len(chunks), os.cpu_count() or 1))
  with multiprocessing.get_context("spawn").Pool(processes) as pool:
    for examples in pool.imap(_speak_chunk, chunks):
      for key, example in examples:
        yield f"{key}/{example['voice']}", example
      done += len(examples)
      print(f"\rkjv_speech {split}: {done}/{len(rows)} verses spoken, "
            f"{time.time() - started:.0f} s", end="", file=sys.stderr, flush=True)
  print(file=sys.stderr, flush=True)


class KjvSpeech(tfds.core.GeneratorBasedBuilder):
  """Short KJV verses spoken by espeak-ng, flite and festival voices, 16 kHz FLAC, with the
  transcript, the voice and (festival's voices) each word's times."""
  VERSION = tfds.core.Version("1.0.0")
  LIMIT = None  # verses per split; the tiny variant keeps a few

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # 16 kHz 16-bit mono FLAC (audio.decode_audio): lossless and half the size,
            # where an int16 array would be written as varints (10 bytes a negative sample)
            "flac": tfds.features.Tensor(shape=(), dtype=np.object_),
            "text": tfds.features.Text(),  # the verse as written
            "voice": tfds.features.Text(),  # a key of speech.VOICES
            "words": tfds.features.Text(),  # the engine's words, space-separated
            "word_times": tfds.features.Tensor(shape=(None, 2), dtype=np.float32)}),
        description=f"KJV verses of at most {MAX_WORDS} words spoken by the speech engines "
                    f"Debian ships; the voice {HELD_OUT_VOICE} only in test_held_out_voice.",
        # Written in the order spoken, reproducibly (TFDS's shuffle spills to disk through
        # TensorFlow, which we do not install); readers shuffle (grain).
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    plan = speech_plan(limit=self.LIMIT)
    return {split: self._generate_examples(rows, split) for split, rows in plan.items()}

  def _generate_examples(self, rows, split):
    yield from _spoken(rows, split)


class KjvSpeechTiny(KjvSpeech):
  """kjv_speech's first 12 verses of each split: for tests and the notebook."""
  LIMIT = 12
