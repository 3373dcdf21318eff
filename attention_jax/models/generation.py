"""Autoregressive decoding with KV caches: sampling for GPT, greedy and beam search for
the encoder-decoder. Everything is jit-compiled; caches live in Flax's 'cache' collection."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -1e9


def sample_logits(logits, rng, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None):
  """Draws one token per row from [batch, vocab] logits; temperature 0 means greedy."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    kth = lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p is not None:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
    cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def _check_sampling(max_new_tokens, temperature, top_k, top_p, vocab_size):
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}.")
  if top_k is not None and not 1 <= top_k <= vocab_size:
    raise ValueError(f"top_k must be in [1, vocab_size={vocab_size}], got {top_k}.")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1], got {top_p}.")


def init_cache(decoder, *inputs, method=None):
  """Zeroed 'cache' collection of `decoder` (decode=True) sized by `inputs`, no compute."""
  init = functools.partial(decoder.init, jax.random.key(0), method=method)
  shapes = jax.eval_shape(init, *inputs)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def generate(model, params, prompt, *, max_new_tokens: int, rng, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None):
  """Continues `prompt` [batch, prompt_len] with a GPT's KV cache; returns the new tokens.

  One jit-compiled program: a prefill over the prompt, then `max_new_tokens - 1` cached
  single-token steps in a `lax.scan`. Deterministic for a fixed `rng`.

  Returns:
    int32 [batch, max_new_tokens].
  """
  _check_sampling(max_new_tokens, temperature, top_k, top_p, model.vocab_size)
  total = prompt.shape[1] + max_new_tokens
  if total > model.max_len and model.position == "learned":
    raise ValueError(f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) = "
                     f"{total} exceeds the model's {model.max_len} positions.")
  return _generate(model.clone(decode=True), params, jnp.asarray(prompt, jnp.int32), rng,
                   max_new_tokens, temperature, top_k, top_p)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _generate(decoder, params, prompt, rng, max_new_tokens, temperature, top_k, top_p):
  batch, prompt_len = prompt.shape
  cache = init_cache(decoder, jnp.zeros((batch, prompt_len + max_new_tokens), jnp.int32))
  sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  logits, state = decoder.apply({"params": params, "cache": cache}, prompt, mutable=["cache"])
  first = sample(logits[:, -1], jax.random.fold_in(rng, 0))

  def step(carry, i):
    token, cache = carry
    logits, state = decoder.apply({"params": params, "cache": cache}, token[:, None],
                                  mutable=["cache"])
    token = sample(logits[:, -1], jax.random.fold_in(rng, i))
    return (token, state["cache"]), token

  _, rest = lax.scan(step, (first, state["cache"]), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1).astype(jnp.int32)


def beam_search(model, params, source, *, beam_size: int, max_len: int, bos_id: int,
                eos_id: int, source_lengths=None, length_penalty: float = 0.6):
  """Beam search for an `EncoderDecoder` with cached decoder self-attention.

  Finished beams keep their score and emit `eos_id`; at the end scores are divided by the
  GNMT length penalty ((5 + length) / 6) ** length_penalty and the best beam is returned.

  Returns:
    (tokens int32 [batch, max_len] without the leading BOS, scores float32 [batch]).
  """
  if beam_size < 1 or max_len < 1:
    raise ValueError(f"beam_size and max_len must be >= 1, got {beam_size} and {max_len}.")
  if max_len > model.max_len:
    raise ValueError(f"max_len {max_len} exceeds the model's {model.max_len} positions.")
  source = jnp.asarray(source, jnp.int32)
  if source_lengths is None:
    source_lengths = jnp.full((source.shape[0],), source.shape[1], jnp.int32)
  return _beam_search(model.clone(decode=True), params, source, source_lengths, beam_size,
                      max_len, bos_id, eos_id, length_penalty)


def greedy_decode(model, params, source, *, max_len: int, bos_id: int, eos_id: int,
                  source_lengths=None):
  """Greedy decoding (beam search with one beam). Returns tokens int32 [batch, max_len]."""
  return beam_search(model, params, source, beam_size=1, max_len=max_len, bos_id=bos_id,
                     eos_id=eos_id, source_lengths=source_lengths, length_penalty=0.0)[0]


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _beam_search(decoder, params, source, source_lengths, beam_size, max_len, bos_id, eos_id,
                 length_penalty):
  batch, k = source.shape[0], beam_size
  encoded = decoder.clone(decode=False).apply({"params": params}, source, source_lengths,
                                              method="encode")
  tile = lambda x: jnp.repeat(x, k, axis=0)  # [batch, ...] -> [batch * k, ...]
  encoded, lengths = tile(encoded), tile(source_lengths)
  cache = init_cache(decoder, jnp.zeros((batch * k, max_len), jnp.int32), encoded, lengths,
                     method="decode_logits")
  tokens = jnp.full((batch, k, max_len + 1), bos_id, jnp.int32)
  scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  finished = jnp.zeros((batch, k), bool)

  def reorder(x, parent):  # cache leaves [batch * k, ...] follow their parent beam
    if x.ndim == 0:
      return x
    x = x.reshape((batch, k) + x.shape[1:])
    index = parent.reshape((batch, k) + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1).reshape((batch * k,) + x.shape[2:])

  def step(state, t):
    tokens, scores, finished, cache = state
    logits, new = decoder.apply({"params": params, "cache": cache},
                                tokens[:, :, t].reshape(batch * k, 1), encoded, lengths,
                                method="decode_logits", mutable=["cache"])
    log_probs = jax.nn.log_softmax(logits[:, -1]).reshape(batch, k, -1)
    vocab = log_probs.shape[-1]
    only_eos = jnp.full((vocab,), NEG_INF).at[eos_id].set(0.0)
    log_probs = jnp.where(finished[:, :, None], only_eos, log_probs)
    candidates = (scores[:, :, None] + log_probs).reshape(batch, k * vocab)
    scores, flat = lax.top_k(candidates, k)
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    tokens = jnp.take_along_axis(tokens, parent[:, :, None], axis=1).at[:, :, t + 1].set(token)
    finished = jnp.take_along_axis(finished, parent, axis=1) | (token == eos_id)
    cache = jax.tree.map(lambda x: reorder(x, parent), new["cache"])
    return (tokens, scores, finished, cache), None

  (tokens, scores, _, _), _ = lax.scan(step, (tokens, scores, finished, cache),
                                       jnp.arange(max_len))
  tokens = tokens[:, :, 1:]
  is_eos = tokens == eos_id
  length = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1) + 1, max_len)
  normalised = scores / ((5.0 + length) / 6.0) ** length_penalty
  best = jnp.argmax(normalised, axis=1)
  pick = lambda x: jnp.take_along_axis(x, best.reshape((batch, 1) + (1,) * (x.ndim - 2)),
                                       axis=1)[:, 0]
  return pick(tokens), pick(normalised)
