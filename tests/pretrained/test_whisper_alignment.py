"""Word timestamps: the median filter and dynamic time warping against transformers' own
(independent implementations of openai/whisper's), and word timings on a transformers-built
checkpoint."""

import numpy as np
import pytest

from attention_jax import pretrained
from attention_jax.data import audio
from attention_jax.models import whisper_alignment, whisper_decoding
from attention_jax.models.whisper_alignment import WordTiming
from tests.test_transcribe import checkpoint  # noqa: F401  pylint: disable=unused-import

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.whisper import generation_whisper  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 5, 40), (1, 3, 4, 9), (2, 3, 3)])
def test_median_filter_equals_transformers(shape):
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  want = generation_whisper._median_filter(torch.tensor(x), 7).numpy()  # pylint: disable=protected-access
  np.testing.assert_array_equal(whisper_alignment.median_filter(x, 7), want)


def test_dynamic_time_warping_equals_transformers():
  rng = np.random.default_rng(0)
  for rows, columns in [(3, 10), (8, 40), (12, 12), (20, 7)]:
    for matrix in (rng.standard_normal((rows, columns)).astype(np.float32),
                   rng.integers(0, 3, (rows, columns)).astype(np.float32)):  # ties
      got = whisper_alignment.dynamic_time_warping(matrix)
      want = generation_whisper._dynamic_time_warping(matrix.copy())  # pylint: disable=protected-access
      np.testing.assert_array_equal(got[0], want[0])
      np.testing.assert_array_equal(got[1], want[1])
      assert got[0][0] == got[1][0] == 0 and got[0][-1] == rows - 1


def test_punctuation_joins_its_neighbour():
  words = [WordTiming(w, i, i + 1, 1.0, (i,)) for i, w in enumerate(
      [" He", " said", ",", " (", "go", ")", " now", "."])]
  merged = whisper_alignment.merge_punctuation(words)
  assert [w.word for w in merged] == [" He", " said,", " (go)", " now."]
  assert merged[2].tokens == (3, 4, 5) and merged[2].start == 4  # the word's own time


def test_words_keep_characters_a_byte_level_bpe_cuts_in_two():
  from attention_jax.data import tokenizers
  tokenizer = tokenizers.train_whisper_tokenizer([" And God said", " the pins"], 270)
  ids = tokenizer.encode(" ¶ The pins, of æther.")
  assert len(tokenizer.encode(" ¶")) == 3  # the space, then the pilcrow's two bytes
  words = whisper_alignment.split_words(tokenizer, ids)
  assert [tokenizer.decode(w) for w in words] == [" ¶", " The", " pins", ",", " of",
                                                   " æther", "."]
  assert sum(words, []) == ids


@pytest.fixture(scope="module")
def loaded(checkpoint):  # noqa: F811  pylint: disable=redefined-outer-name
  return pretrained.load(str(checkpoint))


def test_word_timings_cover_the_text_in_order(loaded):
  model, params, tokenizer = loaded
  rng = np.random.default_rng(2)
  waveform = 0.1 * rng.standard_normal(16000).astype(np.float32)
  features = audio.recording_features(waveform, window_seconds=0.8)[None, :80]
  text = tokenizer.encode("in the beginning god created the heaven")
  words = whisper_alignment.word_timings(model, params, tokenizer, features, text, frames=60,
                                         time_offset=2.0)
  assert [w.word.strip() for w in words] == "in the beginning god created the heaven".split()
  assert sum(len(w.tokens) for w in words) == len(text)
  starts = [w.start for w in words]
  assert starts == sorted(starts) and all(w.start <= w.end for w in words)
  assert 2.0 <= starts[0] and words[-1].end <= 2.0 + 0.6  # within the 60 audio frames
  assert all(0.0 < w.probability <= 1.0 for w in words)
  # The model's cross-attention, by layer: what the alignment reads.
  tokens = np.array([tokenizer.prompt() + text + [tokenizer.end_id]], np.int32)
  _, weights = whisper_alignment.cross_attention_weights(model, params, features, tokens)
  assert weights.shape == (3, 1, 4, tokens.shape[1], 40)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)


def test_long_form_segments_carry_their_words(loaded):
  model, params, tokenizer = loaded
  waveform = 0.1 * np.random.default_rng(1).standard_normal(24000).astype(np.float32)
  features = audio.recording_features(waveform, window_seconds=0.8)
  segments = whisper_decoding.transcribe_long(
      model, params, tokenizer, features, temperatures=(0.0,), word_timestamps=True,
      compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
  assert segments
  for segment in segments:
    assert "".join(w.word for w in segment.words).strip() == segment.text


def test_word_times_fit_when_the_text_fills_the_decoder(loaded):
  """Without timestamps the decoder may write until its last position; the words are then
  aligned after the untimed prompt and before the end, so decoding leaves them room."""
  model, params, tokenizer = loaded
  waveform = 0.1 * np.random.default_rng(4).standard_normal(8000).astype(np.float32)
  features = audio.recording_features(waveform, window_seconds=0.8)
  segments = whisper_decoding.transcribe_long(
      model, params, tokenizer, features, timestamps=False, temperatures=(0.0,),
      word_timestamps=True, compression_ratio_threshold=None, logprob_threshold=None,
      no_speech_threshold=None)
  room = whisper_alignment.text_room(model, tokenizer)
  assert segments and all(len(s.tokens) <= room for s in segments)
  assert all("".join(w.word for w in s.words).strip() == s.text for s in segments)
