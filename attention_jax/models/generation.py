"""Autoregressive decoding with KV caches: sampling for GPT, greedy and beam search for
the encoder-decoder. Everything is jit-compiled; caches live in Flax's 'cache' collection."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attention_jax.layers.config import with_options
from attention_jax.layers.partitioning import in_stack

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


def init_cache(decoder, *inputs, method=None, **kwargs):
  """Zeroed 'cache' collection of `decoder` (decode=True) sized by `inputs`, no compute."""
  init = functools.partial(decoder.init, jax.random.key(0), method=method, **kwargs)
  shapes = jax.eval_shape(init, *inputs)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def bucket_length(length: int, minimum: int = 16) -> int:
  """The padded prompt length of a prompt of `length` tokens: the next power of two (at
  least `minimum`), so prompts of many lengths share one compiled program."""
  return max(minimum, 1 << max(length - 1, 0).bit_length())


def left_pad(prompts, length: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [batch, length], pads int32 [batch]): each prompt right-aligned after
  `pads` pad tokens, so every row's next token goes into the same cache slot."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  pads = np.zeros(len(prompts), np.int32)
  for row, prompt in enumerate(prompts):
    prompt = np.asarray(prompt, np.int32).reshape(-1)
    if not 0 < len(prompt) <= length:
      raise ValueError(f"prompt {row} has {len(prompt)} tokens; prompts need 1 to {length}.")
    pads[row] = length - len(prompt)
    tokens[row, pads[row]:] = prompt
  return tokens, pads


def _prompt_rows(prompt) -> list[np.ndarray]:
  """A [batch, length] array or a list of token sequences of any lengths, as rows."""
  if isinstance(prompt, (list, tuple)):
    return [np.asarray(p, np.int32).reshape(-1) for p in prompt]
  prompt = np.asarray(prompt, np.int32)
  if prompt.ndim != 2:
    raise ValueError(f"prompt must be [batch, length] or a list of token lists, got shape "
                     f"{prompt.shape}.")
  return list(prompt)


def _prepare(model, prompt, max_new_tokens, temperature, top_k, top_p, bucket: bool,
             pad_id: int):
  """Checks; (decoder, left-padded tokens, pads) of a `generate` call."""
  config = model.config
  _check_sampling(max_new_tokens, temperature, top_k, top_p, config.vocab_size)
  rows = _prompt_rows(prompt)
  longest = max(len(r) for r in rows)
  if longest + max_new_tokens > config.max_len and config.position == "learned":
    raise ValueError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) = "
                     f"{longest + max_new_tokens} exceeds the model's {config.max_len} "
                     "positions.")
  tokens, pads = left_pad(rows, bucket_length(longest) if bucket else longest, pad_id)
  return with_options(model, decode=True), jnp.asarray(tokens), jnp.asarray(pads)


def _segment_ids(pads, q_slots, total: int):
  """(q_ids [batch, q], kv_ids [batch, total]): pad tokens are segment 0 and real tokens
  segment 1, so no row attends to its padding and none is left empty (the cache adds
  causality). Segments rather than a dense mask, so recurrent and windowed kernels decode too."""
  real_kv = (jnp.arange(total)[None] >= pads[:, None]).astype(jnp.int32)
  real_q = (q_slots[None] >= pads[:, None]).astype(jnp.int32)
  return real_q, real_kv


def _positions(pads, slots):
  """[batch, len(slots)] positions counted from each row's first real token."""
  return jnp.maximum(slots[None] - pads[:, None], 0)


def _prefill(decoder, params, tokens, pads, max_new_tokens):
  """The prompt through the decoder: (last logits [batch, vocab], cache)."""
  batch, length = tokens.shape
  total = length + max_new_tokens
  # Sized for the bucket plus the new tokens; positions stay within the prompt's own.
  cache = init_cache(decoder, jnp.zeros((batch, total), jnp.int32),
                     positions=jnp.zeros((batch, total), jnp.int32))
  slots = jnp.arange(length)
  logits, state = decoder.apply({"params": params, "cache": cache}, tokens,
                                positions=_positions(pads, slots),
                                segment_ids=_segment_ids(pads, slots, total),
                                mutable=["cache"])
  return logits[:, -1], state["cache"]


def _step(decoder, params, token, cache, slot, pads, total: int):
  """One token per row at cache slot `slot`: (logits [batch, vocab], cache)."""
  slots = slot[None]
  logits, state = decoder.apply({"params": params, "cache": cache}, token[:, None],
                                positions=_positions(pads, slots),
                                segment_ids=_segment_ids(pads, slots, total),
                                mutable=["cache"])
  return logits[:, -1], state["cache"]


def _sampler(temperature, top_k, top_p, vocab_limit):
  """sample_logits with these settings, drawing only ids below vocab_limit (if set)."""
  draw = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
  if vocab_limit is None:
    return draw
  return lambda logits, key: draw(
      jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf), key)


def generate(model, params, prompt, *, max_new_tokens: int, rng, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             stop_tokens: tuple[int, ...] = (), pad_id: int = 0, bucket: bool = True,
             vocab_limit: int | None = None):
  """Continues prompts with a decoder's KV cache (GPT, Llama); returns the new tokens.

  `prompt` is int [batch, length] or a list of token sequences of different lengths; they
  are left-padded to a bucket length (`bucket_length`: the next power of two), with
  positions counted from each row's first real token, so one compiled program serves every
  prompt length up to the bucket. One jit-compiled program: a prefill, then cached
  single-token steps in a `lax.while_loop` that stops early once every row has emitted one
  of `stop_tokens`. Deterministic for a fixed `rng`. `vocab_limit`: only ids below it are
  drawn (a vocabulary padded above its tokenizer's).

  Returns:
    int32 [batch, max_new_tokens]: after a row's stop token (kept), `pad_id`.
  """
  decoder, tokens, pads = _prepare(model, prompt, max_new_tokens, temperature, top_k, top_p,
                                   bucket, pad_id)
  return _generate(decoder, params, tokens, pads, rng, max_new_tokens, temperature, top_k,
                   top_p, tuple(stop_tokens), pad_id, vocab_limit)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8, 9, 10, 11))
def _generate(decoder, params, tokens, pads, rng, max_new_tokens, temperature, top_k, top_p,
              stop_tokens, pad_id, vocab_limit):
  batch, length = tokens.shape
  total = length + max_new_tokens
  sample = _sampler(temperature, top_k, top_p, vocab_limit)
  stops = jnp.asarray(stop_tokens or (-1,), jnp.int32)
  logits, cache = _prefill(decoder, params, tokens, pads, max_new_tokens)
  first = sample(logits, jax.random.fold_in(rng, 0)).astype(jnp.int32)
  out = jnp.full((batch, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)

  def running(carry):
    i, _, _, _, done = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def step(carry):
    i, token, cache, out, done = carry
    logits, cache = _step(decoder, params, token, cache, length + i - 1, pads, total)
    token = sample(logits, jax.random.fold_in(rng, i)).astype(jnp.int32)
    token = jnp.where(done, pad_id, token)
    return i + 1, token, cache, out.at[:, i].set(token), done | jnp.isin(token, stops)

  carry = (jnp.int32(1), first, cache, out, jnp.isin(first, stops))
  return lax.while_loop(running, step, carry)[3]


def generate_stream(model, params, prompt, *, max_new_tokens: int, rng,
                    temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, stop_tokens: tuple[int, ...] = (),
                    pad_id: int = 0, bucket: bool = True, vocab_limit: int | None = None):
  """`generate`, one step at a time: yields each step's tokens (numpy int32 [batch]) as soon
  as they are computed, for printing text as it is produced. Same tokens as `generate` for
  the same arguments; two compiled programs (prefill, step) per bucket."""
  decoder, tokens, pads = _prepare(model, prompt, max_new_tokens, temperature, top_k, top_p,
                                   bucket, pad_id)
  length = tokens.shape[1]
  total = length + max_new_tokens
  sample = jax.jit(_sampler(temperature, top_k, top_p, vocab_limit))
  prefill = jax.jit(_prefill, static_argnums=(0, 4))
  step = jax.jit(_step, static_argnums=(0, 6))
  logits, cache = prefill(decoder, params, tokens, pads, max_new_tokens)
  done = np.zeros(tokens.shape[0], bool)
  for i in range(max_new_tokens):
    if i:
      logits, cache = step(decoder, params, token, cache, jnp.int32(length + i - 1), pads,
                           total)
    token = sample(logits, jax.random.fold_in(rng, i)).astype(jnp.int32)
    token = jnp.where(done, pad_id, token)
    host = np.asarray(token)
    yield host
    done |= np.isin(host, stop_tokens)
    if done.all():
      return


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
  if max_len > model.config.max_len:
    raise ValueError(f"max_len {max_len} exceeds the model's {model.config.max_len} "
                     "positions.")
  source = jnp.asarray(source, jnp.int32)
  if source_lengths is None:
    source_lengths = jnp.full((source.shape[0],), source.shape[1], jnp.int32)
  return _beam_search(with_options(model, decode=True), params, source, source_lengths,
                      beam_size, max_len, bos_id, eos_id, length_penalty)


def greedy_decode(model, params, source, *, max_len: int, bos_id: int, eos_id: int,
                  source_lengths=None):
  """Greedy decoding (beam search with one beam). Returns tokens int32 [batch, max_len]."""
  return beam_search(model, params, source, beam_size=1, max_len=max_len, bos_id=bos_id,
                     eos_id=eos_id, source_lengths=source_lengths, length_penalty=0.0)[0]


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8))
def _beam_search(decoder, params, source, source_lengths, beam_size, max_len, bos_id, eos_id,
                 length_penalty):
  batch, k = source.shape[0], beam_size
  encoded = with_options(decoder, decode=False).apply({"params": params}, source,
                                                     source_lengths, method="encode")
  tile = lambda x: jnp.repeat(x, k, axis=0)  # [batch, ...] -> [batch * k, ...]
  encoded, lengths = tile(encoded), tile(source_lengths)
  cache = init_cache(decoder, jnp.zeros((batch * k, max_len), jnp.int32), encoded, lengths,
                     method="decode_logits")
  tokens = jnp.full((batch, k, max_len + 1), bos_id, jnp.int32)
  scores = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
  finished = jnp.zeros((batch, k), bool)

  def reorder(path, x, parent):  # cache leaves [batch * k, ...] follow their parent beam
    axis = int(in_stack(path))  # stacked blocks' caches are [layers, batch * k, ...]
    if x.ndim <= axis:  # cache indices
      return x
    x = jnp.moveaxis(x, axis, 0)
    x = x.reshape((batch, k) + x.shape[1:])
    index = parent.reshape((batch, k) + (1,) * (x.ndim - 2))
    x = jnp.take_along_axis(x, index, axis=1).reshape((batch * k,) + x.shape[2:])
    return jnp.moveaxis(x, 0, axis)

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
    cache = jax.tree_util.tree_map_with_path(lambda p, x: reorder(p, x, parent), new["cache"])
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
