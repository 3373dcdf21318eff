"""Speech's front end: Whisper's log-mel spectrogram equals transformers'
WhisperFeatureExtractor (numpy and jax.numpy, 80 and 128 bins, padded to 30 s or not);
audio files read as 16 kHz mono, resampled without aliasing; bad files named."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.data import audio


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(int(audio.SAMPLE_RATE * seconds)) / audio.SAMPLE_RATE
  tones = sum(a * np.sin(2 * np.pi * f * t) for a, f in ((0.3, 220), (0.2, 1250), (0.1, 3700)))
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
  return (envelope * tones + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_equals_transformers_whisper_feature_extractor(n_mels):
  from transformers import WhisperFeatureExtractor
  extractor = WhisperFeatureExtractor(feature_size=n_mels)
  np.testing.assert_allclose(audio.mel_filters(n_mels), extractor.mel_filters, atol=1e-7)
  waves = [_speechlike(7.3, seed=0), _speechlike(12.0, seed=1)]
  want = extractor(waves, sampling_rate=16000, return_tensors="np").input_features
  for i, wave in enumerate(waves):
    got = audio.log_mel_spectrogram(wave, n_mels=n_mels)
    assert got.shape == (3000, n_mels) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[i].T, atol=1e-4)
    on_device = jax.jit(audio.log_mel_spectrogram, static_argnames="n_mels")(
        jnp.asarray(wave), n_mels=n_mels)
    assert isinstance(on_device, jax.Array)
    np.testing.assert_allclose(np.asarray(on_device), want[i].T, atol=1e-4)
  # A batch [2, samples] gives each row's own (the clamp below the maximum is per row).
  same_length = np.stack([waves[0], waves[1][:waves[0].size]])
  batched = audio.log_mel_spectrogram(same_length, n_mels=n_mels)
  np.testing.assert_allclose(batched[0], audio.log_mel_spectrogram(waves[0], n_mels=n_mels))


def test_unpadded_training_windows_equal_transformers_unpadded():
  from transformers import WhisperFeatureExtractor
  wave = _speechlike(4.0)
  want = WhisperFeatureExtractor()(wave, sampling_rate=16000, padding="longest",
                                   return_tensors="np").input_features[0].T
  got = audio.log_mel_spectrogram(wave, pad=False)
  assert got.shape == (400, 80)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_spectrogram_inputs_that_are_wrong_say_what_to_do():
  with pytest.raises(ValueError, match="defined at 16000 Hz; got audio at 44100 Hz"):
    audio.log_mel_spectrogram(np.zeros(1000), sample_rate=44100)
  with pytest.raises(ValueError, match="n_mels must be 80 .* or 128"):
    audio.log_mel_spectrogram(np.zeros(1000), n_mels=64)
  with pytest.raises(ValueError, match="31.00 s of audio is longer than this model's 30.00 s "
                     "window"):
    audio.log_mel_spectrogram(np.zeros(31 * 16000))
  with pytest.raises(ValueError, match="too few for a spectrogram"):
    audio.log_mel_spectrogram(np.zeros(100), pad=False)


def test_files_are_read_as_16khz_mono_and_resampled_without_aliasing(tmp_path):
  import soundfile
  rate = 44100
  t = np.arange(rate * 2) / rate
  tone, alias = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 12000 * t)  # 12 kHz > 8
  stereo = np.stack([0.5 * tone + 0.25 * alias, 0.5 * tone - 0.25 * alias], axis=1)
  soundfile.write(tmp_path / "stereo.wav", stereo.astype(np.float32), rate, subtype="FLOAT")
  wave = audio.read_audio(str(tmp_path / "stereo.wav"))  # channels averaged: the alias cancels
  assert wave.dtype == np.float32 and wave.shape == (32000,)
  expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 16000)
  np.testing.assert_allclose(wave[1000:-1000], expected[1000:-1000], atol=2e-3)
  # A 12 kHz tone cannot exist at 16 kHz: the resampler's low-pass removes it.
  removed = audio.resample(alias.astype(np.float32), rate)
  assert np.sqrt(np.mean(removed[1000:-1000] ** 2)) < 1e-2
  soundfile.write(tmp_path / "verse.flac", expected.astype(np.float32), 16000)
  np.testing.assert_allclose(audio.read_audio(str(tmp_path / "verse.flac")), expected,
                             atol=1e-4)  # FLAC's 16 bits


def test_audio_files_that_cannot_be_read_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no audio file at '.*missing.wav'"):
    audio.read_audio(str(tmp_path / "missing.wav"))
  (tmp_path / "noise.wav").write_bytes(b"RIFF not really a wave file")
  with pytest.raises(ValueError, match="cannot read '.*noise.wav' as audio"):
    audio.read_audio(str(tmp_path / "noise.wav"))
  os.mkfifo(tmp_path / "pipe.wav")
  with pytest.raises(ValueError, match="is not a regular file"):
    audio.read_audio(str(tmp_path / "pipe.wav"))


def test_flac_bytes_round_trip_losslessly():
  """Datasets store FLAC bytes: 16-bit audio comes back sample for sample."""
  rng = np.random.default_rng(0)
  waveform = np.round(rng.uniform(-0.9, 0.9, 16000) * 32767) / 32767
  data = audio.encode_flac(waveform)
  assert data[:4] == b"fLaC"
  back = audio.decode_audio(data)
  np.testing.assert_array_equal(np.round(back * 32768), np.round(waveform * 32767))
  with pytest.raises(ValueError, match="cannot read these bytes as audio"):
    audio.decode_audio(b"not audio")
