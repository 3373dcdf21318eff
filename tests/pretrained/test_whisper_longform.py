"""Whisper's long-form transcription: windows cut into segments and seeked as transformers
does, the temperature fallback and no-speech skipping on a transformers-built checkpoint."""

import numpy as np
import pytest

from attention_jax import pretrained
from attention_jax.data import audio
from attention_jax.models import whisper_decoding
from tests.test_transcribe import checkpoint  # noqa: F401  pylint: disable=unused-import

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
BEGIN = 100  # <|0.00|> in these token sequences; text tokens below it


def _random_window_tokens(rng):
  """Tokens a window may decode: text, timestamp pairs, maybe a single timestamp at the end,
  monotonic timestamps."""
  tokens, stamp = [], 0
  if rng.random() < 0.9:
    tokens.append(BEGIN + stamp)
  for _ in range(rng.integers(0, 5)):
    tokens += list(rng.integers(0, BEGIN, rng.integers(1, 5)))
    stamp += int(rng.integers(1, 40))
    tokens.append(BEGIN + stamp)
    if rng.random() < 0.6:
      tokens.append(BEGIN + stamp)
  if rng.random() < 0.3:
    tokens += list(rng.integers(0, BEGIN, 3))
  return tokens or [5, 6]


def test_window_segments_equal_transformers_retrieve_segment():
  from transformers.models.whisper.generation_whisper import WhisperGenerationMixin
  rng = np.random.default_rng(0)
  kinds = set()
  for _ in range(300):
    tokens = _random_window_tokens(rng)
    frames = int(rng.integers(200, 3001))
    offset = float(rng.integers(0, 100)) * 0.3
    got, seek = whisper_decoding.window_segments(tokens, BEGIN, offset, frames)
    want, want_seek = WhisperGenerationMixin._retrieve_segment(  # pylint: disable=protected-access
        seek_sequence=torch.tensor(tokens), seek_outputs=[None], time_offset=torch.tensor(
            [offset], dtype=torch.float64), timestamp_begin=BEGIN,
        seek_num_frames=torch.tensor([frames]), time_precision=0.02,
        time_precision_features=0.01, input_stride=2, prev_idx=0, idx=0,
        return_token_timestamps=False, decoder_input_ids=torch.zeros((1, 3), dtype=torch.long))
    assert int(seek) == int(want_seek), tokens
    assert len(got) == len(want), tokens
    no_stamp_at_the_end = not any(t > BEGIN for t in tokens) and len(got) == 1
    for (start, end, piece), segment in zip(got, want):
      assert start == pytest.approx(float(segment["start"]), abs=1e-9)
      if no_stamp_at_the_end:  # the window's exact end; transformers' floors to 0.02 s
        assert end == pytest.approx(offset + frames / 100, abs=1e-9)
        assert -1e-9 <= end - float(segment["end"]) < 0.02 + 1e-9
      else:
        assert end == pytest.approx(float(segment["end"]), abs=1e-9)
      assert piece == segment["tokens"].tolist()
    kinds.add((len(got) > 1, seek == frames))
  assert kinds == {(False, True), (True, True), (True, False), (False, False)}


def test_compression_ratio_flags_repetition():
  assert whisper_decoding.compression_ratio("") == 0.0
  assert whisper_decoding.compression_ratio("In the beginning God created the heaven.") < 1.5
  assert whisper_decoding.compression_ratio("and he said " * 20) > 2.4


@pytest.fixture(scope="module")
def loaded(checkpoint):  # noqa: F811  pylint: disable=redefined-outer-name
  return pretrained.load(str(checkpoint))


def _features(seconds, model):
  rng = np.random.default_rng(1)
  waveform = 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
  return audio.recording_features(waveform, window_seconds=model.window_seconds)


def test_long_audio_is_read_window_after_window(loaded):
  model, params, tokenizer = loaded
  features = _features(3.0, model)  # 0.8 s windows: at least four
  seen = []
  segments = whisper_decoding.transcribe_long(
      model, params, tokenizer, features, temperatures=(0.0,),
      compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None,
      progress=lambda done, total: seen.append((done, total)))
  assert seen[-1] == (3.0, 3.0) and len(seen) >= 4
  assert [d for d, _ in seen] == sorted(d for d, _ in seen)
  assert segments and all(s.temperature == 0.0 for s in segments)
  for before, after in zip(segments, segments[1:]):
    assert before.start <= after.start
  assert all(0.0 <= s.start <= s.end <= 3.0 + 0.8 for s in segments)
  # Without timestamps: one segment per window, windows back to back, greedy in each.
  plain = whisper_decoding.transcribe_long(
      model, params, tokenizer, features, timestamps=False, temperatures=(0.0,),
      compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
  window = 80
  first = features[None, :window]
  assert plain[0].start == 0.0 and plain[0].end == pytest.approx(0.8)
  assert plain[0].text == whisper_decoding.transcribe(model, params, tokenizer, first)[0]


def test_fallback_raises_the_temperature_and_silence_is_skipped(loaded):
  model, params, tokenizer = loaded
  features = _features(1.5, model)
  # Every result is "improbable" (average log-probability below 0): each window goes through
  # all the temperatures and keeps the last, sampled, result.
  hot = whisper_decoding.transcribe_long(
      model, params, tokenizer, features, temperatures=(0.0, 0.5, 1.0),
      logprob_threshold=0.0, no_speech_threshold=None)
  assert hot and all(s.temperature == 1.0 for s in hot)
  assert all(s.avg_logprob < 0 for s in hot)
  # And if, moreover, <|nospeech|> is likely (threshold 0), every window is silence.
  assert whisper_decoding.transcribe_long(
      model, params, tokenizer, features, logprob_threshold=0.0, no_speech_threshold=0.0) == []
  with pytest.raises(ValueError, match="lack the window of silence"):
    whisper_decoding.transcribe_long(model, params, tokenizer, features[:50])


def test_beams_decode_each_window_at_temperature_zero(loaded):
  model, params, tokenizer = loaded
  features = _features(0.8, model)
  options = dict(compression_ratio_threshold=None, logprob_threshold=None,
                 no_speech_threshold=None, timestamps=False)
  [segment] = whisper_decoding.transcribe_long(model, params, tokenizer, features,
                                               temperatures=(0.0,), beam_size=3, **options)
  prompt = np.array([tokenizer.prompt()])
  want = whisper_decoding.beam_search(
      model, params, features[None, :80], prompt, beam_size=3,
      max_new_tokens=model.config.max_len - prompt.shape[1], eos_id=tokenizer.end_id,
      suppress=tokenizer.suppress_tokens, begin_suppress=tokenizer.begin_suppress_tokens,
      pad_id=tokenizer.end_id)
  assert segment.text == tokenizer.decode(np.asarray(want.tokens)[0]).strip()
  assert segment.no_speech_prob > 0  # the prompt's, as in greedy decoding


def test_overlapping_chunks_are_cut_as_transformers_pipeline_cuts_them():
  from transformers.pipelines.automatic_speech_recognition import chunk_iter
  rng = np.random.default_rng(0)
  for samples, chunk_s, stride_s in [(16000 * 7, 2.0, 0.5), (16000 * 2, 2.0, 0.5),
                                     (16000 * 5 + 123, 1.6, None), (3000, 1.0, 0.25)]:
    waveform = rng.standard_normal(samples).astype(np.float32)
    ours = audio.overlapping_chunks(waveform, chunk_s, stride_s)
    stride = round((chunk_s / 6 if stride_s is None else stride_s) * 16000)
    extractor = type("Extractor", (), {"sampling_rate": 16000,
                                       "__call__": lambda self, x, **_: {}})()
    theirs = [item["stride"] for item in chunk_iter(
        waveform, extractor, round(chunk_s * 16000), stride, stride)]
    assert [len(c) for c in ours] == [length for length, _, _ in theirs]
    step = round(chunk_s * 16000) - 2 * stride
    for i, piece in enumerate(ours):
      np.testing.assert_array_equal(piece, waveform[i * step:i * step + len(piece)])
  with pytest.raises(ValueError, match="leaves nothing"):
    audio.overlapping_chunks(np.zeros(100), 1.0, 0.5)


def test_merge_overlapping_equals_transformers():
  from transformers.models.whisper.tokenization_whisper import _find_longest_common_sequence
  rng = np.random.default_rng(0)
  for _ in range(200):
    text = list(rng.integers(0, 30, rng.integers(5, 60)))
    chunks, start = [], 0
    while start < len(text):  # overlapping pieces, with a decoding error now and then
      piece = list(text[start:start + int(rng.integers(8, 20))])
      if piece and rng.random() < 0.3:
        piece[int(rng.integers(len(piece)))] = int(rng.integers(0, 30))
      chunks.append(piece)
      start += int(rng.integers(3, 10))
    assert whisper_decoding.merge_overlapping(chunks) == [
        int(t) for t in _find_longest_common_sequence([list(c) for c in chunks])]
  clean = [[1, 2, 3, 4, 5, 6], [4, 5, 6, 7, 8, 9], [8, 9, 10, 11]]
  assert whisper_decoding.merge_overlapping(clean) == list(range(1, 12))


def test_chunks_are_decoded_in_batches_and_merged(loaded):
  model, params, tokenizer = loaded
  waveform = 0.1 * np.random.default_rng(3).standard_normal(16000 * 2).astype(np.float32)
  chunks = audio.overlapping_chunks(waveform, model.window_seconds, 0.1)
  features = np.stack([audio.log_mel_spectrogram(c, window_seconds=model.window_seconds)
                       for c in chunks])
  seen = []
  text = whisper_decoding.transcribe_chunks(model, params, tokenizer, features, batch_size=2,
                                            progress=lambda d, t: seen.append((d, t)))
  one_by_one = [whisper_decoding.transcribe(model, params, tokenizer, features[i:i + 1])[0]
                for i in range(len(chunks))]
  assert len(chunks) == 3 and seen == [(2, 3), (3, 3)]  # 0.8 s windows every 0.6 s
  words = lambda t: set(t.split())
  assert words(text) <= set().union(*map(words, one_by_one))


@pytest.mark.parametrize("pad_with_silence", [False, True])
def test_the_last_window_is_padded_as_the_model_was_trained(loaded, monkeypatch,
                                                            pad_with_silence):
  """Past the recording's end a window holds zeros (Whisper's checkpoints, as openai/whisper
  and transformers pad) or, with pad_with_silence, the log-mel of silence that `features`
  ends with (what the asr task trains on)."""
  model, params, tokenizer = loaded
  features = _features(1.0, model)  # 100 frames of audio, then 80 of silence; windows of 80
  seen, decode = [], whisper_decoding.decode
  monkeypatch.setattr(whisper_decoding, "decode",
                      lambda m, p, chunk, *a, **k: seen.append(chunk) or decode(m, p, chunk,
                                                                                   *a, **k))
  whisper_decoding.transcribe_long(
      model, params, tokenizer, features, timestamps=False, temperatures=(0.0,),
      compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None,
      pad_with_silence=pad_with_silence)
  assert len(seen) == 2 and seen[1].shape == (1, 80, features.shape[1])
  np.testing.assert_array_equal(seen[1][0, :20], features[80:100])
  tail = features[100:160] if pad_with_silence else np.zeros_like(features[100:160])
  np.testing.assert_array_equal(seen[1][0, 20:], tail)
  assert np.all(features[100:160] != 0)  # silence's log-mel is not zeros: the cases differ
