"""experiments.transcribe end to end on a Whisper checkpoint transformers built (random
weights, a small word-level tokenizer with Whisper's special tokens): audio files of any
length in, transcripts and subtitles out (the same text as decoding the features directly),
errors named."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.pretrained.test_whisper_parity import _hf_whisper
from tests.training.test_parallel import REPO

WORDS = ("and god said let there be light the earth was without form void darkness upon "
         "face of deep spirit moved waters in beginning created heaven").split()
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
            "<|notimestamps|>"] + [f"<|{0.02 * i:.2f}|>" for i in range(4)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A Whisper directory: transformers' random model (vocabulary 96), our word-level
  tokenizer with Whisper's special tokens after its words, and generation_config.json."""
  from tokenizers import Tokenizer, models as token_models, pre_tokenizers
  directory = tmp_path_factory.mktemp("whisper")
  hf = _hf_whisper(seed=3, init_std=0.3, max_target_positions=24)
  hf.save_pretrained(directory)
  tokenizer = Tokenizer(token_models.WordLevel(
      {w: i for i, w in enumerate(["[UNK]"] + WORDS)}, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(SPECIALS)
  tokenizer.save(str(directory / "tokenizer.json"))
  (directory / "generation_config.json").write_text(json.dumps(
      {"suppress_tokens": [3], "begin_suppress_tokens": [len(WORDS) + 1],
       "alignment_heads": [[1, 0], [2, 3]]}))
  return directory


def _wav(path, seconds, frequency=440.0):
  import soundfile
  t = np.arange(int(22050 * seconds)) / 22050
  soundfile.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), 22050)
  return str(path)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.transcribe", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


GREEDY = ("--temperatures=0", "--no_speech_threshold=none", "--logprob_threshold=none",
          "--compression_ratio_threshold=none")


def test_audio_files_in_transcripts_out(checkpoint, tmp_path):
  from attention_jax import pretrained
  from attention_jax.data import audio
  from attention_jax.models import whisper_decoding
  # The checkpoint's 40 source positions are 0.8 s windows: the first file takes two.
  files = [_wav(tmp_path / "a.wav", 1.5), _wav(tmp_path / "b.wav", 0.7, 880.0)]
  model, params, tokenizer = pretrained.load(str(checkpoint))
  assert tokenizer.suppress_tokens == (3,) and tokenizer.prompt() == [
      len(WORDS) + 2, len(WORDS) + 3, len(WORDS) + 6, len(WORDS) + 10]
  result = _run(f"--init_from={checkpoint}", "--format=json", *GREEDY, *files)
  assert result.returncode == 0, result.stderr
  transcripts = json.loads(result.stdout)
  assert [t["file"] for t in transcripts] == files and transcripts[1]["seconds"] == 0.7
  assert "[2/2]" in result.stderr and "0.8/1.5 s" in result.stderr  # windows, then files
  for path, transcript in zip(files, transcripts):
    features = audio.recording_features(audio.read_audio(path), window_seconds=0.8)
    want = whisper_decoding.transcribe_long(
        model, params, tokenizer, features, timestamps=False, temperatures=(0.0,),
        compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
    assert [s["text"] for s in transcript["segments"]] == [s.text for s in want]
    assert set(transcript["text"].split()) <= set(WORDS + ["[UNK]"])
  assert transcripts[0]["text"]  # words, not an empty string
  assert [(s["start"], s["end"]) for s in transcripts[0]["segments"]] == [(0.0, 0.8),
                                                                         (0.8, 1.5)]


@pytest.mark.parametrize("kind", ["srt", "vtt"])
def test_subtitles(checkpoint, tmp_path, kind):
  files = [_wav(tmp_path / "a.wav", 1.5)]
  result = _run(f"--init_from={checkpoint}", f"--format={kind}", *GREEDY, *files)
  assert result.returncode == 0, result.stderr
  text = result.stdout
  if kind == "srt":
    assert text.startswith("1\n00:00:00,000 --> 00:00:00,800\n")
    assert "\n\n2\n00:00:00,800 --> 00:00:01,500\n" in text
  else:
    assert text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.800\n")
    assert "\n\n00:00:00.800 --> 00:00:01.500\n" in text


def test_subtitle_clock():
  from experiments.transcribe import _clock
  assert _clock(3723.4567, ",") == "01:02:03,457"
  assert _clock(59.9996, ".") == "00:01:00.000"


def test_transcribe_names_what_is_wrong(checkpoint, tmp_path):
  result = _run(f"--init_from={checkpoint}", str(tmp_path / "missing.wav"))
  assert result.returncode != 0 and "no audio file at" in result.stderr
  result = _run(f"--init_from={checkpoint}")
  assert result.returncode != 0 and "name one or more audio files" in result.stderr


def test_the_whisper_tokenizer_round_trips_through_export(checkpoint, tmp_path):
  """Its prompt for each language and task, decoding without special tokens, and export:
  tokenizer.json and generation_config.json's rules come back as they went."""
  from attention_jax import pretrained
  model, params, tokenizer = pretrained.load(str(checkpoint))
  ids = tokenizer.encode("let there be light")
  assert tokenizer.decode(tokenizer.prompt("de", "translate", timestamps=True) + ids +
                          [tokenizer.end_id]) == "let there be light"
  assert tokenizer.prompt(None) == [tokenizer.start_id, tokenizer.task_ids["transcribe"],
                                    tokenizer.no_timestamps_id]
  with pytest.raises(ValueError, match="no language 'xx'"):
    tokenizer.prompt("xx")
  pretrained.export(model, params, str(tmp_path / "again"), tokenizer)
  _, _, again = pretrained.load(str(tmp_path / "again"))
  assert again.encode("let there be light") == ids
  assert (again.suppress_tokens, again.begin_suppress_tokens) == (
      tokenizer.suppress_tokens, tokenizer.begin_suppress_tokens)
  assert again.alignment_heads == tokenizer.alignment_heads == ((1, 0), (2, 3))
  (tmp_path / "again" / "generation_config.json").write_text(
      json.dumps({"alignment_heads": [[1, "0"]]}))
  with pytest.raises(ValueError, match="alignment_heads must be a list of \\[layer, head\\]"):
    pretrained.load(str(tmp_path / "again"))


def test_word_timestamps_in_json(checkpoint, tmp_path):
  result = _run(f"--init_from={checkpoint}", "--format=json", "--timestamps=word", *GREEDY,
                _wav(tmp_path / "a.wav", 1.5))
  assert result.returncode == 0, result.stderr
  segments = json.loads(result.stdout)[0]["segments"]
  assert segments and all("words" in s for s in segments)
  for segment in segments:
    assert "".join(w["word"] for w in segment["words"]).strip() == segment["text"]
    assert all(w["start"] <= w["end"] and 0 < w["probability"] <= 1 for w in segment["words"])


def test_chunked_transcription_in_batches(checkpoint, tmp_path):
  files = [_wav(tmp_path / "a.wav", 2.0), _wav(tmp_path / "b.wav", 0.5, 880.0)]
  result = _run(f"--init_from={checkpoint}", "--chunked", "--batch_size=2", "--stride=0.1",
                "--format=json", *files)
  assert result.returncode == 0, result.stderr
  transcripts = json.loads(result.stdout)
  assert [t["file"] for t in transcripts] == files and "3/3 windows" in result.stderr
  assert set(transcripts[0]["text"].split()) <= set(WORDS + ["[UNK]"])
  refused = _run(f"--init_from={checkpoint}", "--chunked", "--format=srt", files[0])
  assert refused.returncode != 0 and "--chunked gives text without times" in refused.stderr
