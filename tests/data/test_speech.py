"""The speech engines Debian ships, and kjv_speech (its tiny variant) built from them."""

import numpy as np
import pytest

from attention_jax.data import audio, pipeline, speech

VERSE = "In the beginning God created the heaven and the earth."


@pytest.mark.parametrize("name", list(speech.VOICES))
def test_every_voice_speaks(name):
  waveform, words = speech.synthesise(VERSE, speech.VOICES[name])
  assert waveform.dtype == np.float32 and waveform.ndim == 1
  seconds = len(waveform) / audio.SAMPLE_RATE
  assert 1.5 < seconds < 8.0, seconds  # about three seconds of speech, whatever the voice
  assert np.abs(waveform).max() > 0.1 and np.abs(waveform).max() <= 1.0
  if speech.VOICES[name].engine == "festival":  # its Word relation: every word, timed
    assert [w for w, _, _ in words] == VERSE.rstrip(".").split()
    times = np.array([(s, e) for _, s, e in words])
    assert (times[:, 1] > times[:, 0]).all() and (times[1:, 0] >= times[:-1, 1] - 1e-6).all()
    assert times[-1, 1] <= seconds
    # the sound is where the words are: louder inside "beginning" than in the lead-in silence
    start, end = (round(t * audio.SAMPLE_RATE) for t in times[2, :])
    assert np.abs(waveform[start:end]).mean() > 10 * np.abs(waveform[:800]).mean()
  else:
    assert words is None


def test_the_held_out_voice_is_a_new_sound():
  """The held-out voice's average spectrum differs from every training voice's."""
  def spectrum(name):
    waveform, _ = speech.synthesise(VERSE, speech.VOICES[name])
    return audio.log_mel_spectrogram(waveform, pad=False).mean(axis=0)
  held_out = spectrum(speech.HELD_OUT_VOICE)
  for name in speech.TRAINING_VOICES:
    assert np.abs(spectrum(name) - held_out).mean() > 0.05, name


def test_a_missing_engine_names_its_package(monkeypatch):
  monkeypatch.setattr(speech.shutil, "which", lambda _: None)
  with pytest.raises(FileNotFoundError, match="sudo apt-get install festival festvox"):
    speech.synthesise(VERSE, speech.VOICES["festival/slt"])
  with pytest.raises(FileNotFoundError, match="apt-get install flite"):
    speech.require_engine("flite")


def test_the_plan_holds_one_voice_out():
  plan = speech.speech_plan()
  assert {s: len(rows) for s, rows in plan.items()} == {
      "train": 4577, "validation": 91, "test": 89, "test_held_out_voice": 89}
  assert all(len(verse.split()) <= speech.MAX_WORDS for rows in plan.values()
             for _, verse, _ in rows)
  for split in ("train", "validation", "test"):
    voices = {voice for _, _, voice in plan[split]}
    assert speech.HELD_OUT_VOICE not in voices
    assert len(voices) == len(speech.TRAINING_VOICES)
  assert [(k, v) for k, v, _ in plan["test"]] == [(k, v) for k, v, _ in
                                                  plan["test_held_out_voice"]]
  train_keys = {k for k, _, _ in plan["train"]}
  assert not train_keys & {k for k, _, _ in plan["test"] + plan["validation"]}


@pytest.mark.slow
def test_kjv_speech_tiny_builds_and_reads_back(tmp_path):
  data_dir = str(tmp_path / "tfds")
  train = pipeline.data_source("kjv_speech_tiny", "train", data_dir)
  held_out = pipeline.data_source("kjv_speech_tiny", "test_held_out_voice", data_dir)
  test = pipeline.data_source("kjv_speech_tiny", "test", data_dir)
  assert len(train) == len(held_out) == len(test) == 12
  assert {pipeline.as_text(e["voice"]) for e in held_out} == {speech.HELD_OUT_VOICE}
  assert sorted(pipeline.as_text(e["text"]) for e in held_out) == sorted(
      pipeline.as_text(e["text"]) for e in test)
  for example in train:
    assert len(audio.decode_audio(example["flac"])) > audio.SAMPLE_RATE
    words = pipeline.as_text(example["words"]).split()
    assert example["word_times"].shape == (len(words), 2)
    voice = pipeline.as_text(example["voice"])
    assert (len(words) > 0) == (speech.VOICES[voice].engine == "festival")
  # the same text spoken again gives the same audio: the build is reproducible
  first = train[0]
  again, _ = speech.synthesise(speech._speakable(pipeline.as_text(first["text"])),  # pylint: disable=protected-access
                               speech.VOICES[pipeline.as_text(first["voice"])])
  stored = audio.decode_audio(first["flac"])
  assert np.abs(np.round(again * 32767) - np.round(stored * 32768)).max() <= 1
