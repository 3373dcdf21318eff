"""Speech's front end: reading audio files and Whisper's log-mel spectrogram.

    waveform = audio.read_audio("verse.flac")          # float32 [samples] at 16 kHz, mono
    features = audio.log_mel_spectrogram(waveform)     # [3000, 80]: 30 s, channels last

`log_mel_spectrogram` is Whisper's definition (a 400-sample Hann window every 160 samples,
the power spectrum through Slaney-scale mel filters, log10 floored at 1e-10, clamped to 8
below the maximum, then (x + 4) / 4), computed, filters included, from the formulas: numpy
for a data pipeline, jax.numpy (on whatever device, inside a jitted step) when given a jax
array. 80 mel bins, or 128 (large-v3).
"""

from __future__ import annotations

import io
import math
import os
import stat

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms: 100 frames a second
CHUNK_SECONDS = 30
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000 samples, 3000 frames


def _hz_to_mel(hz):
  """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
  hz = np.asarray(hz, np.float64)
  linear = hz / (200.0 / 3)
  log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (math.log(6.4) / 27.0)
  return np.where(hz >= 1000.0, log, linear)


def _mel_to_hz(mel):
  mel = np.asarray(mel, np.float64)
  linear = mel * (200.0 / 3)
  log = 1000.0 * np.exp((math.log(6.4) / 27.0) * (mel - 15.0))
  return np.where(mel >= 15.0, log, linear)


def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE,
                n_fft: int = N_FFT) -> np.ndarray:
  """float32 [1 + n_fft // 2, n_mels]: triangular filters evenly spaced on Slaney's mel scale
  from 0 Hz to the Nyquist frequency, each scaled to unit area (Slaney's normalisation), as
  librosa's `filters.mel` and Whisper's `mel_filters.npz` (so the power spectrum [..., freq]
  times this gives [..., n_mels])."""
  frequencies = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
  edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
  lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  rising = (frequencies[None] - lower) / (centre - lower)
  falling = (upper - frequencies[None]) / (upper - centre)
  triangles = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, freq]
  return (triangles * (2.0 / (upper - lower))).T.astype(np.float32)


def _hann(length: int) -> np.ndarray:
  """The periodic Hann window (torch.hann_window's default, Whisper's)."""
  return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)).astype(np.float32)


def log_mel_spectrogram(waveform, sample_rate: int = SAMPLE_RATE, n_mels: int = 80,
                        pad: bool = True, window_seconds: float = CHUNK_SECONDS):
  """[..., frames, n_mels] (float32) of waveform [..., samples] at 16 kHz, Whisper's way.

  pad: zeros appended to the model's window, `window_seconds` (Whisper's 30 s: 3000 frames),
  as Whisper's feature extractor does (longer audio is refused: cut it into windows first);
  False: the waveform as it is (samples // 160 frames), for training windows. A jax array
  is computed with jax.numpy (jit-able, on its device), anything else with numpy."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  xp = jnp if isinstance(waveform, jax.Array) else np
  if sample_rate != SAMPLE_RATE:
    raise ValueError(f"Whisper's features are defined at {SAMPLE_RATE} Hz; got audio at "
                     f"{sample_rate} Hz. Resample it first (audio.resample).")
  if n_mels not in (80, 128):
    raise ValueError(f"n_mels must be 80 (Whisper) or 128 (large-v3), got {n_mels}.")
  waveform = xp.asarray(waveform, xp.float32)
  samples = waveform.shape[-1]
  if pad:
    window = round(window_seconds * SAMPLE_RATE)
    if samples > window:
      raise ValueError(f"{samples / SAMPLE_RATE:.2f} s of audio is longer than this model's "
                       f"{window_seconds:.2f} s window; cut it into windows (or pass "
                       "pad=False).")
    waveform = xp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(0, window - samples)])
  if waveform.shape[-1] <= N_FFT // 2:
    raise ValueError(f"{waveform.shape[-1]} samples are too few for a spectrogram "
                     f"(more than {N_FFT // 2} needed).")
  centred = xp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(N_FFT // 2, N_FFT // 2)],
                   mode="reflect")
  frames = waveform.shape[-1] // HOP_LENGTH  # Whisper drops the STFT's last frame
  index = np.arange(frames)[:, None] * HOP_LENGTH + np.arange(N_FFT)[None]
  spectrum = xp.fft.rfft(centred[..., index] * _hann(N_FFT), axis=-1)
  power = xp.real(spectrum) ** 2 + xp.imag(spectrum) ** 2
  mel = xp.matmul(power.astype(xp.float32), mel_filters(n_mels))
  log_spec = xp.log10(xp.maximum(mel, 1e-10))
  log_spec = xp.maximum(log_spec, xp.max(log_spec, axis=(-2, -1), keepdims=True) - 8.0)
  return ((log_spec + 4.0) / 4.0).astype(xp.float32)


def recording_features(waveform, n_mels: int = 80, window_seconds: float = CHUNK_SECONDS):
  """[frames + window, n_mels]: the log-mel spectrogram of a whole recording followed by one
  window of silence, as Whisper's long-form transcription slices it into windows
  (openai/whisper pads the audio by 30 s before the spectrogram; the clamp to 8 below the
  maximum is over the whole recording). frames = samples // 160."""
  window = round(window_seconds * SAMPLE_RATE)
  waveform = np.asarray(waveform, np.float32)
  return log_mel_spectrogram(np.pad(waveform, (0, window)), n_mels=n_mels, pad=False)


def overlapping_chunks(waveform, chunk_seconds: float = CHUNK_SECONDS,
                       stride_seconds: float | None = None) -> list[np.ndarray]:
  """Chunks of `chunk_seconds` that overlap by `stride_seconds` on each side (default a
  sixth of a chunk), each starting chunk - 2 · stride after the last, until one reaches the
  end: batched, chunked transcription's inputs (as transformers' ASR pipeline cuts them;
  a last chunk within the previous one's left stride is dropped)."""
  waveform = np.asarray(waveform, np.float32)
  chunk = round(chunk_seconds * SAMPLE_RATE)
  stride = round((chunk_seconds / 6 if stride_seconds is None else stride_seconds)
                 * SAMPLE_RATE)
  step = chunk - 2 * stride
  if step <= 0:
    raise ValueError(f"a stride of {stride / SAMPLE_RATE:.2f} s on each side leaves nothing "
                     f"of a {chunk_seconds:.2f} s chunk; use a stride below "
                     f"{chunk_seconds / 2:.2f} s.")
  chunks = []
  for start in range(0, len(waveform), step):
    piece = waveform[start:start + chunk]
    if start == 0 or len(piece) > stride:
      chunks.append(piece)
    if start + chunk >= len(waveform):
      break
  return chunks


def resample(waveform: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE):
  """float32 [..., samples] at target_rate: polyphase resampling with a Kaiser-windowed
  (beta 5) low-pass FIR at the lower Nyquist frequency (`scipy.signal.resample_poly`)."""
  from scipy import signal  # pylint: disable=import-outside-toplevel
  if source_rate == target_rate:
    return np.asarray(waveform, np.float32)
  divisor = math.gcd(source_rate, target_rate)
  return signal.resample_poly(np.asarray(waveform, np.float64), target_rate // divisor,
                              source_rate // divisor, axis=-1).astype(np.float32)


def read_audio(path: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """float32 [samples] of an audio file (WAV, FLAC, or another format libsndfile reads),
  its channels averaged to mono and resampled to `sample_rate` (`resample`). A missing
  file, something that is not a regular file, or one libsndfile cannot decode raises an
  error naming it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"no audio file at {path!r}.")
  if not stat.S_ISREG(os.stat(path).st_mode):
    raise ValueError(f"{path!r} is not a regular file (a FIFO or device is never opened).")
  return _decode(path, repr(path), sample_rate)


def decode_audio(data: bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """float32 [samples] of an encoded audio file's bytes (a dataset's FLAC), as read_audio."""
  return _decode(io.BytesIO(data), "these bytes", sample_rate)


def encode_flac(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
  """FLAC (16-bit, lossless for 16-bit audio) of waveform float32 [samples] in [-1, 1]."""
  import soundfile  # pylint: disable=import-outside-toplevel
  pcm = np.clip(np.round(np.asarray(waveform) * 32767), -32768, 32767).astype(np.int16)
  buffer = io.BytesIO()
  soundfile.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16")
  return buffer.getvalue()


def _decode(source, name: str, sample_rate: int) -> np.ndarray:
  import soundfile  # pylint: disable=import-outside-toplevel
  try:
    data, rate = soundfile.read(source, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError) as error:
    raise ValueError(f"cannot read {name} as audio ({error}); WAV and FLAC are "
                     "supported.") from None
  if data.shape[0] == 0:
    raise ValueError(f"{name} holds no samples.")
  return resample(data.mean(axis=1), rate, sample_rate)
