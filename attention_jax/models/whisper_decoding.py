"""Decoding Whisper: the encoder once, then the decoder token by token with its KV cache.

    tokens = whisper_decoding.greedy(model, params, features, prompt, max_new_tokens=224,
                                     eos_id=50257, suppress=..., begin_suppress=...)

`prompt` [batch, p] is the forced start, e.g. <|startoftranscript|><|en|><|transcribe|>
<|notimestamps|>. At every step the `suppress` ids are never chosen, and at the first step
neither are the `begin_suppress` ids (Whisper's blank and end-of-text), as Whisper's
decoding rules say; a row that emits `eos_id` keeps it and is padded with `pad_id` after.
Tested equal to transformers' `generate` (tests/pretrained/test_whisper_parity.py).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attention_jax.layers.config import with_options
from attention_jax.layers.partitioning import in_stack
from attention_jax.models import whisper_alignment
from attention_jax.models.generation import init_cache


def _masked(logits, ids: tuple[int, ...]):
  if not ids:
    return logits
  return logits.at[..., jnp.asarray(ids)].set(-jnp.inf)


def timestamp_rules(logits, generated, count, *, timestamp_begin: int, eos_id: int,
                    no_timestamps_id: int, max_initial_timestamp: int | None = None):
  """Whisper's timestamp rules on logits [batch, vocab], given the `count` tokens generated
  so far (generated [batch, n], entries from `count` on ignored): <|notimestamps|> never;
  timestamps (ids >= timestamp_begin) in pairs, so after one timestamp only another or
  <|endoftext|>, after a pair only text; never a timestamp below the last one (nor the same
  one again after a pair); the first token a timestamp, at most `max_initial_timestamp`
  steps in; and when the timestamps' total probability beats every text token's, a
  timestamp. As openai/whisper's ApplyTimestampRules and transformers'
  WhisperTimeStampLogitsProcessor (tested against it)."""
  vocab = jnp.arange(logits.shape[-1])
  is_timestamp = vocab >= timestamp_begin
  logits = logits.at[:, no_timestamps_id].set(-jnp.inf)
  n = generated.shape[1]
  position = jnp.arange(n)
  seen = position[None] < count
  last = jnp.take_along_axis(generated, jnp.full((generated.shape[0], 1), count - 1)
                             .clip(0, n - 1), axis=1)[:, 0]
  before = jnp.take_along_axis(generated, jnp.full((generated.shape[0], 1), count - 2)
                               .clip(0, n - 1), axis=1)[:, 0]
  last_was = (count >= 1) & (last >= timestamp_begin)
  before_was = (count < 2) | (before >= timestamp_begin)
  logits = jnp.where((last_was & before_was)[:, None] & is_timestamp, -jnp.inf, logits)
  logits = jnp.where((last_was & ~before_was)[:, None] & (vocab < eos_id), -jnp.inf, logits)
  stamps = seen & (generated >= timestamp_begin)
  at = jnp.max(jnp.where(stamps, position[None], 0), axis=1)  # the last timestamp's place
  latest = jnp.take_along_axis(generated, at[:, None], axis=1)[:, 0]
  floor = jnp.where(stamps.any(axis=1),
                    jnp.where(last_was & ~before_was, latest, latest + 1), timestamp_begin)
  logits = jnp.where(is_timestamp & (vocab < floor[:, None]), -jnp.inf, logits)
  first = count == 0
  logits = jnp.where(first & ~is_timestamp, -jnp.inf, logits)
  if max_initial_timestamp is not None:
    logits = jnp.where(first & (vocab > timestamp_begin + max_initial_timestamp), -jnp.inf,
                       logits)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  stamp_mass = jax.nn.logsumexp(jnp.where(is_timestamp, log_probs, -jnp.inf), axis=-1)
  best_text = jnp.max(jnp.where(is_timestamp, -jnp.inf, log_probs), axis=-1)
  return jnp.where((stamp_mass > best_text)[:, None] & ~is_timestamp, -jnp.inf, logits)


class Decoded(NamedTuple):
  """What `decode` returns for a batch: tokens int32 [batch, max_new_tokens] (a row's
  <|endoftext|> kept, `pad_id` after it); sum_logprob [batch], the log-probabilities of
  the chosen tokens (under the decoding rules, before the temperature) up to and with the
  end; no_speech_prob [batch], the probability of `no_speech_id` after the prompt's first
  token, <|startoftranscript|> (Whisper's no-speech detection; 0 without one)."""
  tokens: jax.Array
  sum_logprob: jax.Array
  no_speech_prob: jax.Array


def decode(model, params, features, prompt, *, max_new_tokens: int, eos_id: int,
           suppress: tuple[int, ...] = (), begin_suppress: tuple[int, ...] = (),
           pad_id: int = 0, timestamps: tuple[int, int, int | None] | None = None,
           temperature: float = 0.0, rng=None, no_speech_id: int | None = None) -> Decoded:
  """The continuation of `prompt` [batch, p] given `features` [batch, frames, n_mels]
  (`data.audio.log_mel_spectrogram`): greedy at temperature 0, else sampled from the
  softmax of logits / temperature with `rng`. timestamps: (timestamp_begin,
  no_timestamps_id, max_initial_timestamp) to decode with Whisper's `timestamp_rules` (the
  prompt then ends without <|notimestamps|>)."""
  _check_budget(model, prompt, max_new_tokens)
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs an `rng` key.")
  rng = jax.random.key(0) if rng is None else rng
  return _decode(with_options(model, decode=True), params, jnp.asarray(features),
                 jnp.asarray(prompt, jnp.int32), max_new_tokens, eos_id, tuple(suppress),
                 tuple(begin_suppress), pad_id, None if timestamps is None else tuple(timestamps),
                 no_speech_id, jnp.float32(temperature), rng)


def _check_budget(model, prompt, max_new_tokens: int):
  """Refuses a decoding whose prompt and new tokens do not fit the decoder's positions."""
  limit = model.config.max_len
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
  if prompt.shape[1] + max_new_tokens > limit:
    raise ValueError(f"a prompt of {prompt.shape[1]} tokens and {max_new_tokens} new ones "
                     f"exceed the decoder's {limit} positions; ask for fewer tokens.")


def greedy(model, params, features, prompt, **options):
  """int32 [batch, max_new_tokens]: `decode`'s tokens at temperature 0."""
  return decode(model, params, features, prompt, **options).tokens


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 9, 10))
def _decode(decoder, params, features, prompt, max_new_tokens, eos_id, suppress,
            begin_suppress, pad_id, timestamps, no_speech_id, temperature, rng):
  batch, length = prompt.shape
  encoder = with_options(decoder, decode=False)
  encoded = encoder.apply({"params": params}, features, method=encoder.encode)
  cache = init_cache(decoder, features, jnp.zeros((batch, length + max_new_tokens),
                                                  jnp.int32))

  def logits_of(tokens, cache, encoded=None):  # None: cross-attention reads the cache
    logits, state = decoder.apply({"params": params, "cache": cache}, tokens, encoded,
                                  method=decoder.decode_logits, mutable=["cache"])
    return logits, state["cache"]

  def choose(logits, out, count, key):
    """(token [batch], its log-probability under the rules) from last-position logits."""
    logits = _masked(logits, suppress)
    if timestamps is not None:
      begin, no_timestamps, max_initial = timestamps
      logits = timestamp_rules(logits, out, count, timestamp_begin=begin, eos_id=eos_id,
                               no_timestamps_id=no_timestamps,
                               max_initial_timestamp=max_initial)
    sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    token = jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return token, jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]

  keys = jax.random.split(rng, max_new_tokens)
  logits, cache = logits_of(prompt, cache, encoded)
  if no_speech_id is None:
    no_speech = jnp.zeros((batch,), jnp.float32)
  else:  # at the prompt's first token, <|startoftranscript|>
    no_speech = jax.nn.softmax(logits[:, 0], axis=-1)[:, no_speech_id]
  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  first, logprob = choose(_masked(logits[:, -1], begin_suppress), out, 0, keys[0])
  out = out.at[:, 0].set(first)

  def step(carry, count):
    token, cache, done, out, total = carry
    logits, cache = logits_of(token[:, None], cache)
    done = done | (token == eos_id)
    chosen, logprob = choose(logits[:, -1], out, count, keys[count])
    following = jnp.where(done, pad_id, chosen)
    total = total + jnp.where(done, 0.0, logprob)
    return (following, cache, done, out.at[:, count].set(following), total), None

  carry, _ = lax.scan(step, (first, cache, jnp.zeros((batch,), bool), out, logprob),
                      jnp.arange(1, max_new_tokens))
  return Decoded(carry[3], carry[4], no_speech)


def beam_search(model, params, features, prompt, *, beam_size: int, max_new_tokens: int,
                eos_id: int, suppress: tuple[int, ...] = (),
                begin_suppress: tuple[int, ...] = (), pad_id: int = 0,
                timestamps: tuple[int, int, int | None] | None = None,
                length_penalty: float = 1.0) -> Decoded:
  """Beam search of `beam_size` beams, as transformers' generate(num_beams=...) runs it for
  Whisper (tested equal): each step scores every beam's continuations by summed
  log-probabilities (the decoding rules mask the log-softmax), keeps the best 2·beam_size,
  finishes those that end (<|endoftext|>, or the last step) among the best beam_size, scored
  by sum / length ** length_penalty, and continues the best beam_size that do not; it stops
  when no running beam can beat the worst finished one. Returns the best finished sequence
  per row (its end kept, `pad_id` after), its summed log-probability, and no no-speech
  probability (0)."""
  if beam_size < 1:
    raise ValueError(f"beam_size must be at least 1, got {beam_size}.")
  _check_budget(model, prompt, max_new_tokens)
  return _beam_search(with_options(model, decode=True), params, jnp.asarray(features),
                      jnp.asarray(prompt, jnp.int32), beam_size, max_new_tokens, eos_id,
                      tuple(suppress), tuple(begin_suppress), pad_id,
                      None if timestamps is None else tuple(timestamps), float(length_penalty))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 9, 10, 11))
def _beam_search(decoder, params, features, prompt, k, max_new, eos_id, suppress,
                 begin_suppress, pad_id, timestamps, length_penalty):
  batch, length = prompt.shape
  far = -1.0e9
  encoder = with_options(decoder, decode=False)
  encoded = jnp.repeat(encoder.apply({"params": params}, features, method=encoder.encode), k,
                       axis=0)  # [batch * k, positions, width]
  cache = init_cache(decoder, features[:1].repeat(batch * k, axis=0),
                     jnp.zeros((batch * k, length + max_new), jnp.int32))
  logits, state = decoder.apply({"params": params, "cache": cache}, jnp.repeat(prompt, k, 0),
                                encoded, method=decoder.decode_logits, mutable=["cache"])

  def step(carry, t):
    (logits, cache, running, running_scores, running_sums, finished, finished_scores,
     finished_sums, is_finished, unsatisfied, stopped) = carry
    log_probs = _masked(jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1),
                        suppress)
    log_probs = jnp.where(t == 0, _masked(log_probs, begin_suppress), log_probs)
    if timestamps is not None:
      begin, no_timestamps, max_initial = timestamps
      log_probs = timestamp_rules(log_probs, running.reshape(batch * k, max_new), t,
                                  timestamp_begin=begin, eos_id=eos_id,
                                  no_timestamps_id=no_timestamps,
                                  max_initial_timestamp=max_initial)
    vocab = log_probs.shape[-1]
    totals = (running_scores[:, :, None] + log_probs.reshape(batch, k, vocab)).reshape(batch, -1)
    top, index = lax.top_k(totals, 2 * k)  # [batch, 2k]
    parent, token = index // vocab, (index % vocab).astype(jnp.int32)
    gather = lambda x, i: jnp.take_along_axis(x, i.reshape(i.shape + (1,) * (x.ndim - 2)), 1)
    candidates = gather(running, parent).at[:, :, t].set(token)
    sums = top  # summed log-probabilities (the running score is the sum)
    hits = (token == eos_id) | (t + 1 == max_new)
    # the best k candidates that go on
    keep = lax.top_k(jnp.where(hits, top + far, top), k)[1]
    new_running, new_scores = gather(candidates, keep), gather(jnp.where(hits, top + far, top),
                                                               keep)
    # those that end among the best k, against the finished ones
    just_finished = hits & (jnp.arange(2 * k) < k)[None]
    scored = (top / (t + 1.0) ** length_penalty + far * (~unsatisfied)[:, None]
              + far * (~just_finished))
    merged_scores = jnp.concatenate([finished_scores, scored], axis=1)
    best = lax.top_k(merged_scores, k)[1]
    new_finished = gather(jnp.concatenate([finished, candidates], 1), best)
    new_finished_scores = gather(merged_scores, best)
    new_finished_sums = gather(jnp.concatenate([finished_sums, sums], 1), best)
    new_is_finished = gather(jnp.concatenate([is_finished, just_finished], 1), best)
    # the heuristic stop: no running beam can beat the worst finished one
    best_running = new_scores[:, :1] / (t + 1.0) ** length_penalty
    worst = jnp.where(new_is_finished, jnp.min(new_finished_scores, 1, keepdims=True), far)
    new_unsatisfied = unsatisfied & jnp.any(best_running > worst, axis=1)
    # the cache follows the beams that go on
    source = (gather(parent, keep) + jnp.arange(batch)[:, None] * k).reshape(-1)
    cache = jax.tree_util.tree_map_with_path(  # stacked blocks' leaves: [layers, rows, ...]
        lambda path, x: x if x.ndim <= in_stack(path) else jnp.take(x, source,
                                                                    axis=int(in_stack(path))),
        cache)
    following = new_running[:, :, t].reshape(-1, 1)
    new_logits, state = decoder.apply({"params": params, "cache": cache}, following, None,
                                      method=decoder.decode_logits, mutable=["cache"])
    new = (new_logits, state["cache"], new_running, new_scores, gather(sums, keep),
           new_finished, new_finished_scores, new_finished_sums, new_is_finished,
           new_unsatisfied, stopped | ~jnp.any(new_unsatisfied) | jnp.all(hits))
    return jax.tree.map(lambda old, fresh: jnp.where(stopped, old, fresh), carry, new), None

  running = jnp.full((batch, k, max_new), pad_id, jnp.int32)
  scores = jnp.tile(jnp.array([0.0] + [far] * (k - 1), jnp.float32), (batch, 1))
  carry = (logits, state["cache"], running, scores, scores, running,
           jnp.full((batch, k), far, jnp.float32), jnp.zeros((batch, k), jnp.float32),
           jnp.zeros((batch, k), bool), jnp.ones((batch,), bool), jnp.array(False))
  carry, _ = lax.scan(step, carry, jnp.arange(max_new))
  return Decoded(carry[5][:, 0], carry[7][:, 0], jnp.zeros((batch,), jnp.float32))


def transcribe(model, params, tokenizer, features, *, language: str | None = "en",
               task: str = "transcribe", max_new_tokens: int | None = None) -> list[str]:
  """The texts of features [batch, frames, n_mels] (30 s windows,
  `data.audio.log_mel_spectrogram`), decoded greedily from `tokenizer.prompt(language,
  task)` (a `pretrained.WhisperTokenizer`) with its suppress and begin-suppress tokens,
  until <|endoftext|> or the decoder's positions run out."""
  prompt = tokenizer.prompt(language, task)
  budget = model.config.max_len - len(prompt)
  tokens = greedy(model, params, features, jnp.asarray([prompt] * features.shape[0]),
                  max_new_tokens=min(max_new_tokens or budget, budget),
                  eos_id=tokenizer.end_id, suppress=tokenizer.suppress_tokens,
                  begin_suppress=tokenizer.begin_suppress_tokens, pad_id=tokenizer.end_id)
  texts = []
  for row in jax.device_get(tokens):
    ended = [i for i, token in enumerate(row) if token == tokenizer.end_id]
    texts.append(tokenizer.decode(row[:ended[0]] if ended else row).strip())
  return texts


# --- Long-form: 30 s windows that seek by the last timestamp, with temperature fallback ---
TIME_PRECISION = 0.02  # seconds between timestamp tokens: one encoder position
FRAMES_PER_POSITION = 2  # log-mel frames (10 ms) per encoder position
MAX_INITIAL_TIMESTAMP = 50  # the first timestamp at most 1.0 s into a window
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclasses.dataclass(frozen=True)
class Segment:
  """A stretch of transcript: start and end in seconds, its text and tokens (timestamp
  tokens included), and how its window was decoded."""
  start: float
  end: float
  text: str
  tokens: tuple[int, ...]
  temperature: float = 0.0
  avg_logprob: float = 0.0
  compression_ratio: float = 0.0
  no_speech_prob: float = 0.0
  words: tuple = ()  # whisper_alignment.WordTiming, with word_timestamps


def compression_ratio(text: str) -> float:
  """The text's UTF-8 length over its zlib-compressed length: above ~2.4, a repetition loop
  (Whisper's measure)."""
  data = text.encode("utf-8")
  return len(data) / len(zlib.compress(data)) if data else 0.0


def window_segments(tokens, timestamp_begin: int, time_offset: float, window_frames: int):
  """([(start_s, end_s, tokens)], frames to seek) of one window's generated tokens (the end
  and padding removed): segments between pairs of timestamps; a window whose tokens end in
  a single timestamp (no speech after it) is read whole, else the next window starts at the
  last pair's timestamp, dropping the unfinished speech after it; tokens with no pair are
  one segment, to the last timestamp if any, else the window's end. As transformers'
  WhisperGenerationMixin._retrieve_segment (tested against it), except that a window's end
  is exact, as openai/whisper's (transformers' rounds it down to a timestamp's 0.02 s)."""
  tokens = [int(t) for t in tokens]
  is_stamp = [t >= timestamp_begin for t in tokens]
  single_ending = is_stamp[-2:] == [False, True]
  pairs = [i + 1 for i in range(len(tokens) - 1) if is_stamp[i] and is_stamp[i + 1]]
  at = lambda position: time_offset + position * TIME_PRECISION
  if not pairs:
    stamps = [t for t, s in zip(tokens, is_stamp) if s]
    end = (at(stamps[-1] - timestamp_begin) if stamps and stamps[-1] != timestamp_begin
           else time_offset + window_frames / 100)
    return [(time_offset, end, tokens)], window_frames
  slices = pairs + [len(tokens)] if single_ending else pairs[:-1] + [pairs[-1] + 1]
  segments, last = [], 0
  for i, current in enumerate(slices):
    piece = tokens[last:current]
    final = i == len(slices) - 1
    end_index = -1 if not final or single_ending else -2
    segments.append((at(piece[0] - timestamp_begin), at(piece[end_index] - timestamp_begin),
                     piece))
    last = current
  if single_ending:
    return segments, window_frames
  return segments, (tokens[last - 2] - timestamp_begin) * FRAMES_PER_POSITION


def transcribe_long(model, params, tokenizer, features, *, language: str | None = "en",
                    task: str = "transcribe", timestamps: bool = True,
                    temperatures=TEMPERATURES, compression_ratio_threshold: float | None = 2.4,
                    logprob_threshold: float | None = -1.0,
                    no_speech_threshold: float | None = 0.6, rng=None,
                    max_new_tokens: int | None = None, beam_size: int = 1,
                    word_timestamps: bool = False, alignment_heads=None,
                    pad_with_silence: bool = False, progress=None) -> list[Segment]:
  """Segments of audio of any length, features [frames + window, n_mels] (the recording's
  log-mel spectrogram and a window of silence, `data.audio.recording_features`), Whisper's way:
  windows of the encoder's length (30 s), each decoded at the first of `temperatures` whose
  result is neither a loop (compression ratio above its threshold) nor improbable (average
  log-probability below its threshold); a window that is probably silent (no-speech
  probability above its threshold and improbable text) is skipped; at temperature 0,
  `beam_size` > 1 decodes by `beam_search`. With `timestamps` the
  next window starts where the last complete segment ended; without, windows follow each
  other and each is one segment. A window's features past the recording's end are zeros, as
  openai/whisper's and transformers' (what Whisper's checkpoints expect);
  `pad_with_silence`: the log-mel of silence there instead, as a model trained here saw
  every window (`features` already ends with it). `word_timestamps`: each segment's words
  with their times (`whisper_alignment.word_timings`, by `alignment_heads` [(layer,
  head)], default the tokenizer's, from generation_config.json, else the decoder's second
  half).
  `progress(seconds_done, seconds_total)` after each window.
  `tokenizer` is a `pretrained.WhisperTokenizer`."""
  window = FRAMES_PER_POSITION * model.config.max_source_positions
  prompt = tokenizer.prompt(language, task, timestamps=timestamps)
  budget = model.config.max_len - len(prompt)
  if word_timestamps:  # the text is aligned again after the untimed prompt, before the end
    budget = min(budget, whisper_alignment.text_room(model, tokenizer, language, task))
  options = dict(
      max_new_tokens=min(max_new_tokens or budget, budget), eos_id=tokenizer.end_id,
      suppress=tokenizer.suppress_tokens, begin_suppress=tokenizer.begin_suppress_tokens,
      pad_id=tokenizer.end_id, no_speech_id=tokenizer.no_speech_id,
      timestamps=((tokenizer.timestamp_begin, tokenizer.no_timestamps_id,
                   MAX_INITIAL_TIMESTAMP) if timestamps else None))
  rng = jax.random.key(0) if rng is None else rng
  features = np.asarray(features, np.float32)
  total, seek, segments = features.shape[0] - window, 0, []
  if total < 0:
    raise ValueError(f"features of {features.shape[0]} frames lack the window of silence "
                     f"({window} frames) after the recording: use "
                     "data.audio.recording_features.")
  while seek < total:
    frames = min(window, total - seek)
    if pad_with_silence:
      chunk = features[None, seek:seek + window]
    else:  # zeros after the audio, as openai/whisper pads a window
      chunk = np.zeros((1, window, features.shape[1]), np.float32)
      chunk[0, :frames] = features[seek:seek + frames]
    for temperature in temperatures:
      rng, key = jax.random.split(rng)
      if temperature == 0 and beam_size > 1:
        no_speech_free = {k: v for k, v in options.items() if k != "no_speech_id"}
        result = beam_search(model, params, chunk, np.array([prompt]), beam_size=beam_size,
                             **no_speech_free)
        if options["no_speech_id"] is not None:  # the probability is the prompt's, either way
          greedy_first = decode(model, params, chunk, np.array([prompt]),
                                **{**options, "max_new_tokens": 1})
          result = result._replace(no_speech_prob=greedy_first.no_speech_prob)
      else:
        result = decode(model, params, chunk, np.array([prompt]), temperature=temperature,
                        rng=key, **options)
      result = jax.device_get(result)
      tokens = [int(t) for t in result.tokens[0]]
      tokens = tokens[:tokens.index(tokenizer.end_id)] if tokenizer.end_id in tokens else tokens
      avg_logprob = float(result.sum_logprob[0]) / (len(tokens) + 1)
      ratio = compression_ratio(tokenizer.decode(tokens))
      no_speech = float(result.no_speech_prob[0])
      improbable = logprob_threshold is not None and avg_logprob < logprob_threshold
      silent = (no_speech_threshold is not None and no_speech > no_speech_threshold
                and (logprob_threshold is None or improbable))
      looping = compression_ratio_threshold is not None and ratio > compression_ratio_threshold
      if silent or not (looping or improbable):
        break
    if silent or not tokens:
      seek += frames
    else:
      pieces, advance = (window_segments(tokens, tokenizer.timestamp_begin, seek / 100, frames)
                         if timestamps else ([(seek / 100, (seek + frames) / 100, tokens)],
                                             frames))
      words = ([None] * len(pieces) if not word_timestamps else _words_by_piece(
          whisper_alignment.word_timings(
              model, params, tokenizer, chunk, [t for t in tokens if t < tokenizer.end_id],
              frames=frames, language=language, task=task,
              alignment_heads=alignment_heads or tokenizer.alignment_heads,
              time_offset=seek / 100), pieces, tokenizer.end_id))
      segments += [Segment(start, end, tokenizer.decode(piece).strip(), tuple(piece),
                           temperature, avg_logprob, ratio, no_speech, tuple(timings or ()))
                   for (start, end, piece), timings in zip(pieces, words)
                   if tokenizer.decode(piece).strip()]
      seek += advance if 0 < advance <= frames else frames  # never back, never past it
    if progress is not None:
      progress(min(seek, total) / 100, total / 100)
  return segments


def _words_by_piece(timings, pieces, end_id: int) -> list[list]:
  """The word timings of a window shared out to its segments, by their text tokens."""
  shared, i = [], 0
  for _, _, piece in pieces:
    count, mine = sum(t < end_id for t in piece), []
    while i < len(timings) and count > 0:
      mine.append(timings[i])
      count -= len(timings[i].tokens)
      i += 1
    shared.append(mine)
  return shared


# --- Batched, chunked transcription: overlapping windows decoded together, merged ---------
def merge_overlapping(sequences) -> list[int]:
  """One token sequence from those of overlapping chunks: each next chunk is slid along the
  text so far to where their tokens agree best (matches / overlap, longer overlaps winning
  ties), and the two are cut in the middle of that overlap. transformers' Whisper
  `_find_longest_common_sequence` (tested equal)."""
  left = list(sequences[0])
  merged = []
  for right in sequences[1:]:
    right = list(right)
    best, cut = 0.0, (len(left), len(left), 0, 0)
    for i in range(1, len(left) + len(right)):
      left_start, left_stop = max(0, len(left) - i), min(len(left), len(left) + len(right) - i)
      right_start, right_stop = max(0, i - len(left)), min(len(right), i)
      matches = int(np.sum(np.array(left[left_start:left_stop])
                           == np.array(right[right_start:right_stop])))
      score = matches / i + i / 10000.0
      if matches > 1 and score > best:
        best, cut = score, (left_start, left_stop, right_start, right_stop)
    merged += left[:(cut[0] + cut[1]) // 2]
    left = right[(cut[2] + cut[3]) // 2:]
  return merged + left


def transcribe_chunks(model, params, tokenizer, features, *, language: str | None = "en",
                      task: str = "transcribe", batch_size: int = 8, beam_size: int = 1,
                      max_new_tokens: int | None = None, progress=None) -> str:
  """The text of a recording cut into overlapping chunks (`data.audio.overlapping_chunks`),
  features [chunks, window frames, n_mels] each padded as Whisper pads: decoded
  `batch_size` chunks at a time (greedy, or `beam_size` beams), without timestamps, the
  chunks' tokens merged where they overlap (`merge_overlapping`). For throughput: no
  temperature fallback. `progress(chunks_done, chunks)` after each batch."""
  prompt = tokenizer.prompt(language, task)
  budget = model.config.max_len - len(prompt)
  options = dict(max_new_tokens=min(max_new_tokens or budget, budget), eos_id=tokenizer.end_id,
                 suppress=tokenizer.suppress_tokens,
                 begin_suppress=tokenizer.begin_suppress_tokens, pad_id=tokenizer.end_id)
  features = np.asarray(features, np.float32)
  prompts = np.array([prompt] * batch_size, np.int32)
  sequences = []
  for start in range(0, len(features), batch_size):
    batch = features[start:start + batch_size]
    filled = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), 0)])
    result = (beam_search(model, params, filled, prompts, beam_size=beam_size, **options)
              if beam_size > 1 else decode(model, params, filled, prompts, **options))
    sequences += [[int(t) for t in row if t < tokenizer.end_id]
                  for row in np.asarray(result.tokens)[:len(batch)]]
    if progress is not None:
      progress(min(start + batch_size, len(features)), len(features))
  return tokenizer.decode(merge_overlapping(sequences)).strip() if sequences else ""
