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

import functools

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.layers.config import with_options
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


def greedy(model, params, features, prompt, *, max_new_tokens: int, eos_id: int,
           suppress: tuple[int, ...] = (), begin_suppress: tuple[int, ...] = (),
           pad_id: int = 0, timestamps: tuple[int, int, int | None] | None = None):
  """int32 [batch, max_new_tokens]: the greedy continuation of `prompt` [batch, p] given
  `features` [batch, frames, n_mels] (`data.audio.log_mel_spectrogram`). timestamps:
  (timestamp_begin, no_timestamps_id, max_initial_timestamp) to decode with Whisper's
  `timestamp_rules` (the prompt then ends without <|notimestamps|>)."""
  limit = model.config.max_len
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
  if prompt.shape[1] + max_new_tokens > limit:
    raise ValueError(f"a prompt of {prompt.shape[1]} tokens and {max_new_tokens} new ones "
                     f"exceed the decoder's {limit} positions; ask for fewer tokens.")
  return _greedy(with_options(model, decode=True), params, jnp.asarray(features),
                 jnp.asarray(prompt, jnp.int32), max_new_tokens, eos_id, tuple(suppress),
                 tuple(begin_suppress), pad_id, None if timestamps is None else tuple(timestamps))


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 9))
def _greedy(decoder, params, features, prompt, max_new_tokens, eos_id, suppress,
            begin_suppress, pad_id, timestamps):
  batch, length = prompt.shape
  encoder = with_options(decoder, decode=False)
  encoded = encoder.apply({"params": params}, features, method=encoder.encode)
  cache = init_cache(decoder, features, jnp.zeros((batch, length + max_new_tokens),
                                                  jnp.int32))

  def logits_of(tokens, cache, encoded=None):  # None: cross-attention reads the cache
    logits, state = decoder.apply({"params": params, "cache": cache}, tokens, encoded,
                                  method=decoder.decode_logits, mutable=["cache"])
    return _masked(logits[:, -1], suppress), state["cache"]

  def choose(logits, out, count):
    if timestamps is not None:
      begin, no_timestamps, max_initial = timestamps
      logits = timestamp_rules(logits, out, count, timestamp_begin=begin, eos_id=eos_id,
                               no_timestamps_id=no_timestamps,
                               max_initial_timestamp=max_initial)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  logits, cache = logits_of(prompt, cache, encoded)
  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32)
  first = choose(_masked(logits, begin_suppress), out, 0)
  out = out.at[:, 0].set(first)

  def step(carry, count):
    token, cache, done, out = carry
    logits, cache = logits_of(token[:, None], cache)
    done = done | (token == eos_id)
    following = jnp.where(done, pad_id, choose(logits, out, count))
    return (following, cache, done, out.at[:, count].set(following)), None

  carry, _ = lax.scan(step, (first, cache, jnp.zeros((batch,), bool), out),
                      jnp.arange(1, max_new_tokens))
  return carry[3]


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
