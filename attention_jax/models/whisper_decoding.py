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


def greedy(model, params, features, prompt, *, max_new_tokens: int, eos_id: int,
           suppress: tuple[int, ...] = (), begin_suppress: tuple[int, ...] = (),
           pad_id: int = 0):
  """int32 [batch, max_new_tokens]: the greedy continuation of `prompt` [batch, p] given
  `features` [batch, frames, n_mels] (`data.audio.log_mel_spectrogram`)."""
  limit = model.config.max_len
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
  if prompt.shape[1] + max_new_tokens > limit:
    raise ValueError(f"a prompt of {prompt.shape[1]} tokens and {max_new_tokens} new ones "
                     f"exceed the decoder's {limit} positions; ask for fewer tokens.")
  return _greedy(with_options(model, decode=True), params, jnp.asarray(features),
                 jnp.asarray(prompt, jnp.int32), max_new_tokens, eos_id, tuple(suppress),
                 tuple(begin_suppress), pad_id)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _greedy(decoder, params, features, prompt, max_new_tokens, eos_id, suppress,
            begin_suppress, pad_id):
  batch, length = prompt.shape
  encoder = with_options(decoder, decode=False)
  encoded = encoder.apply({"params": params}, features, method=encoder.encode)
  cache = init_cache(decoder, features, jnp.zeros((batch, length + max_new_tokens),
                                                  jnp.int32))

  def logits_of(tokens, cache):
    logits, state = decoder.apply({"params": params, "cache": cache}, tokens, encoded,
                                  method=decoder.decode_logits, mutable=["cache"])
    return _masked(logits[:, -1], suppress), state["cache"]

  logits, cache = logits_of(prompt, cache)
  first = jnp.argmax(_masked(logits, begin_suppress), axis=-1).astype(jnp.int32)

  def step(carry, _):
    token, cache, done = carry
    logits, cache = logits_of(token[:, None], cache)
    following = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    done = done | (token == eos_id)
    following = jnp.where(done, pad_id, following)
    return (following, cache, done), following

  _, rest = lax.scan(step, (first, cache, jnp.zeros((batch,), bool)), None,
                     length=max_new_tokens - 1)
  return jnp.concatenate([first[:, None], rest.T], axis=1)


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
