"""experiments.transcribe end to end on a Whisper checkpoint transformers built (random
weights, a small word-level tokenizer with Whisper's special tokens): audio files in, the
greedy transcripts out (the same text as decoding the features directly), errors named."""

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
      {"suppress_tokens": [3], "begin_suppress_tokens": [len(WORDS) + 1]}))
  return directory


def _wav(path, seconds, frequency=440.0):
  import soundfile
  t = np.arange(int(22050 * seconds)) / 22050
  soundfile.write(path, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), 22050)
  return str(path)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.transcribe", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_audio_files_in_transcripts_out(checkpoint, tmp_path):
  import jax.numpy as jnp
  from attention_jax import pretrained
  from attention_jax.data import audio
  from attention_jax.models import whisper_decoding
  files = [_wav(tmp_path / "a.wav", 1.5), _wav(tmp_path / "b.wav", 0.8, 880.0)]
  # The checkpoint's 40 source positions are 0.8 s of audio: pad to it, not to 30 s.
  model, params, tokenizer = pretrained.load(str(checkpoint))
  assert tokenizer.suppress_tokens == (3,) and tokenizer.prompt() == [
      len(WORDS) + 2, len(WORDS) + 3, len(WORDS) + 6, len(WORDS) + 10]
  result = _run(f"--init_from={checkpoint}", "--format=json", *files)
  assert result.returncode != 0 and "longer than this model's 0.80 s window" in result.stderr
  short = [_wav(tmp_path / "c.wav", 0.5), _wav(tmp_path / "d.wav", 0.7, 880.0)]
  result = _run(f"--init_from={checkpoint}", "--format=json", *short)
  assert result.returncode == 0, result.stderr
  transcripts = json.loads(result.stdout)
  assert [t["file"] for t in transcripts] == short and transcripts[0]["seconds"] == 0.5
  assert "[2/2]" in result.stderr
  for path, transcript in zip(short, transcripts):
    features = audio.log_mel_spectrogram(audio.read_audio(path), window_seconds=0.8)
    want = whisper_decoding.transcribe(model, params, tokenizer,
                                       jnp.asarray(features)[None])[0]
    assert transcript["text"] == want and want  # words, not an empty string
    assert set(want.split()) <= set(WORDS + ["[UNK]"])


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
