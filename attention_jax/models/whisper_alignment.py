"""Word timestamps for Whisper: where in the audio each word of a transcript is said.

    words = whisper_alignment.word_timings(model, params, tokenizer, window_features,
                                           text_tokens, frames=...)
    # [WordTiming(word=" In", start=0.22, end=0.34, probability=0.93), ...]

openai/whisper's method: run the decoder teacher-forced over <|startoftranscript|>
<|lang|> <|task|> <|notimestamps|> text <|endoftext|>, take the cross-attention weights of
the alignment heads (a checkpoint's generation_config.json names them; by default every
head of the decoder's second half), renormalised over the window's audio frames, standardise
each head's weights over the tokens, smooth them along time with a median filter (width 7),
average the heads, and find the monotonic token-to-time path through them by dynamic time
warping. A token's time is where the path reaches its row; a word spans its first token's
time to the next word's; punctuation joins its neighbour.
"""

from __future__ import annotations

import dataclasses
import string
from typing import NamedTuple

import jax
import numpy as np

from attention_jax.layers.config import with_options
from attention_jax.layers.partitioning import in_stack

MEDIAN_FILTER_WIDTH = 7
POSITIONS_PER_SECOND = 50  # encoder positions: 20 ms each
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"


@dataclasses.dataclass(frozen=True)
class WordTiming:
  word: str  # as decoded, with its leading space
  start: float  # seconds
  end: float
  probability: float  # the mean of its tokens' probabilities
  tokens: tuple[int, ...] = ()


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
  """The median of each `width` (odd) window along the last axis, edges reflected."""
  if width <= 0 or width % 2 != 1:
    raise ValueError(f"the median filter's width must be odd and positive, got {width}.")
  pad = width // 2
  if x.shape[-1] <= pad:
    return x
  padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
  windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
  return np.sort(windows, axis=-1)[..., pad]


def dynamic_time_warping(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(row indices, column indices) of the cheapest monotonic path through cost [rows,
  columns] from its first cell to its last, each step one row, one column or both (ties go
  to the column step). float32 sums, as Whisper's."""
  rows, columns = cost.shape
  total = np.full((rows + 1, columns + 1), np.inf, np.float32)
  trace = np.full((rows + 1, columns + 1), -1, np.int8)
  total[0, 0] = 0
  cost = cost.astype(np.float32)
  for j in range(1, columns + 1):
    for i in range(1, rows + 1):
      diagonal, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
      if diagonal < up and diagonal < left:
        best, step = diagonal, 0
      elif up < diagonal and up < left:
        best, step = up, 1
      else:
        best, step = left, 2
      total[i, j] = cost[i - 1, j - 1] + best
      trace[i, j] = step
  trace[0, :], trace[:, 0] = 2, 1
  i, j, path = rows, columns, []
  while i > 0 or j > 0:
    path.append((i - 1, j - 1))
    step = trace[i, j]
    i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
  path = np.array(path[::-1])
  return path[:, 0], path[:, 1]


def cross_attention_weights(model, params, features, tokens) -> np.ndarray:
  """float32 [decoder layers, batch, heads, tokens, positions]: every decoder block's
  cross-attention weights, teacher-forced (the dot_product kernel, which returns them)."""
  probe = with_options(model, sow_weights=True, kernel="dot_product", decode=False)
  logits, state = probe.apply({"params": params}, features, tokens, mutable=["intermediates"])
  layers = []

  def collect(path, leaf):
    keys = [str(getattr(k, "key", "")) for k in path]
    if "cross_attention" in keys and "attention_weights" in keys:
      if in_stack(path):  # scan_layers: [layers, ...]
        layers.extend(np.asarray(leaf, np.float32))
      else:
        layers.append((int(keys[0].rsplit("_", 1)[1]), np.asarray(leaf, np.float32)))

  jax.tree_util.tree_map_with_path(collect, state["intermediates"])
  if layers and isinstance(layers[0], tuple):
    layers = [weights for _, weights in sorted(layers, key=lambda item: item[0])]
  return np.asarray(logits), np.stack(layers)


def default_alignment_heads(model) -> tuple[tuple[int, int], ...]:
  """Every head of the decoder's second half (openai/whisper's default)."""
  c = model.config
  depth = c.decoder_depth or c.depth
  return tuple((layer, head) for layer in range(depth // 2, depth)
               for head in range(c.num_heads))


def split_words(tokenizer, tokens) -> list[list[int]]:
  """`tokens` grouped into words, as openai/whisper's split_tokens_on_unicode then
  split_tokens_on_spaces: first into the shortest runs that decode to whole characters (a
  byte-level BPE spells "¶" or "æ" in two tokens), then a run whose text starts with a
  space, or is ASCII punctuation, or is special (its first id at or above the end token),
  starts a new word."""
  special_from = min(tokenizer.stop_ids)
  tokens = [int(t) for t in tokens]
  full = tokenizer.decode(tokens)
  words, run, text = [], [], ""
  for i, token in enumerate(tokens):
    run.append(token)
    longer = tokenizer.decode(tokens[:i + 1])
    piece = longer[len(text):]  # the run's text, with the space a decoder puts before it
    broken = piece.find("\ufffd")
    if broken >= 0 and full[len(text) + broken:len(text) + broken + 1] != "\ufffd":
      continue  # a character cut in two: its other bytes come in the next tokens
    if (not words or run[0] >= special_from or piece.startswith(" ")
        or piece.strip() in string.punctuation):
      words.append(run)
    else:
      words[-1] += run
    text, run = longer, []
  if run:  # bytes that never completed a character
    words.append(run)
  return words


def merge_punctuation(timings: list[WordTiming]) -> list[WordTiming]:
  """openai/whisper's merge_punctuations: an opening mark (a word " (") joins the word after
  it, a closing mark ("," ".") the word before it (times kept: the word's own); the marks'
  own entries are dropped."""
  words = [[t.word, list(t.tokens)] for t in timings]
  j = len(words) - 1
  for i in range(len(words) - 2, -1, -1):
    if words[i][0].startswith(" ") and words[i][0].strip() in PREPEND_PUNCTUATION:
      words[j] = [words[i][0] + words[j][0], words[i][1] + words[j][1]]
      words[i] = ["", []]
    else:
      j = i
  i = 0
  for j in range(1, len(words)):
    if not words[i][0].endswith(" ") and words[j][0] in APPEND_PUNCTUATION:
      words[i] = [words[i][0] + words[j][0], words[i][1] + words[j][1]]
      words[j] = ["", []]
    else:
      i = j
  return [dataclasses.replace(t, word=w, tokens=tuple(tokens))
          for t, (w, tokens) in zip(timings, words) if w]


class Alignment(NamedTuple):
  """A transcript against its audio: `matrix` [text tokens + 1, positions] (rows:
  <|notimestamps|> then each text token; the alignment heads' standardised, smoothed,
  averaged cross-attention), the monotonic path through it (`rows`, `columns`: dynamic
  time warping on -matrix), and each text token's probability under the model."""
  matrix: np.ndarray
  rows: np.ndarray
  columns: np.ndarray
  token_probs: np.ndarray


def text_room(model, tokenizer, language: str | None = "en", task: str = "transcribe") -> int:
  """The most text tokens `align` takes: the decoder's positions less the untimed prompt and
  the end."""
  return model.config.max_len - len(tokenizer.prompt(language, task, timestamps=False)) - 1


def align(model, params, tokenizer, features, text_tokens, *, frames: int,
          language: str | None = "en", task: str = "transcribe",
          alignment_heads=None) -> Alignment:
  """The `Alignment` of `text_tokens` (a window's transcript, no timestamps) with features
  [1, window frames, n_mels] of which the first `frames` are audio (see the module)."""
  text_tokens = [int(t) for t in text_tokens]
  prompt = tokenizer.prompt(language, task, timestamps=False)
  end = tokenizer.stop_ids[0]
  room = text_room(model, tokenizer, language, task)
  if len(text_tokens) > room:
    raise ValueError(f"{len(text_tokens)} transcript tokens exceed the {room} the decoder's "
                     f"{model.config.max_len} positions leave after the prompt and the end.")
  tokens = np.array([prompt + text_tokens + [end]], np.int32)
  logits, weights = cross_attention_weights(model, params, features, tokens)
  heads = alignment_heads or default_alignment_heads(model)
  weights = np.stack([weights[layer, 0, head] for layer, head in heads])  # [h, tokens, pos]
  weights = weights[:, :, :max(frames // 2, 1)]
  weights = weights / np.maximum(weights.sum(-1, keepdims=True), 1e-20)  # softmax over audio
  mean, std = weights.mean(axis=-2, keepdims=True), weights.std(axis=-2, keepdims=True)
  weights = median_filter((weights - mean) / np.maximum(std, 1e-20), MEDIAN_FILTER_WIDTH)
  matrix = weights.mean(axis=0)[len(prompt) - 1:-1]  # the prompt's start and the end left out
  rows, columns = dynamic_time_warping(-matrix)
  probs = np.asarray(jax.nn.softmax(logits[0, len(prompt) - 1:-1, :end], axis=-1))
  return Alignment(matrix, rows, columns, probs[np.arange(len(text_tokens)), text_tokens])


def word_timings(model, params, tokenizer, features, text_tokens, *, frames: int,
                 language: str | None = "en", task: str = "transcribe",
                 alignment_heads=None, time_offset: float = 0.0) -> list[WordTiming]:
  """The words of `text_tokens` (a window's transcript, no timestamps) with their times in
  seconds (plus `time_offset`), from features [1, window frames, n_mels] of which the first
  `frames` are audio. `tokenizer` is a `pretrained.WhisperTokenizer`, or any with a
  `prompt(language, task)`."""
  text_tokens = [int(t) for t in text_tokens]
  if not text_tokens:
    return []
  found = align(model, params, tokenizer, features, text_tokens, frames=frames,
                language=language, task=task, alignment_heads=alignment_heads)
  jumps = np.pad(np.diff(found.rows), (1, 0), constant_values=1).astype(bool)
  jump_times = found.columns[jumps] / POSITIONS_PER_SECOND
  words = split_words(tokenizer, text_tokens)
  boundaries = np.cumsum([0] + [len(w) for w in words])
  text = lambda count: tokenizer.decode(text_tokens[:count])
  timings = [WordTiming(word=text(b1)[len(text(b0)):], start=time_offset + float(jump_times[b0]),
                        end=time_offset + float(jump_times[b1]),
                        probability=float(found.token_probs[b0:b1].mean()),
                        tokens=tuple(text_tokens[b0:b1]))
             for b0, b1 in zip(boundaries[:-1], boundaries[1:])]
  return merge_punctuation(timings)


def _plain(word: str) -> str:
  return "".join(c for c in word.lower() if c.isalnum())


def matched_starts(timings: list[WordTiming], reference) -> list[tuple[float, float]]:
  """[(hypothesis start, reference start)] of the words that match (letters and digits,
  lower case) between `timings` and `reference` [(word, start, end)], in order (difflib's
  longest matching blocks): a synthesiser's words (festival's "LORD", "twelve") need not be
  the transcript's ("LORD's", "12")."""
  import difflib  # pylint: disable=import-outside-toplevel
  ours = [_plain(t.word) for t in timings]
  theirs = [_plain(w) for w, _, _ in reference]
  pairs = []
  for block in difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_matching_blocks():
    pairs += [(timings[block.a + i].start, float(reference[block.b + i][1]))
              for i in range(block.size)]
  return pairs


def alignment_head_errors(model, params, tokenizer, examples, *, language: str | None = "en",
                          task: str = "transcribe") -> dict:
  """{(layer, head): mean absolute error in seconds of word starts} of every decoder head
  used alone, over `examples` [(features [1, window, n_mels], audio frames, transcript
  tokens, reference [(word, start, end)])]: speech whose word times are known (kjv_speech's
  festival voices). The best heads are the alignment heads to use (openai/whisper chose its
  checkpoints' the same way)."""
  c = model.config
  heads = [(layer, head) for layer in range(c.decoder_depth or c.depth)
           for head in range(c.num_heads)]
  errors = {head: [] for head in heads}
  for features, frames, text_tokens, reference in examples:
    for head in heads:
      timings = word_timings(model, params, tokenizer, features, text_tokens, frames=frames,
                             language=language, task=task, alignment_heads=[head])
      errors[head] += [abs(h - r) for h, r in matched_starts(timings, reference)]
  return {head: float(np.mean(e)) if e else float("inf") for head, e in errors.items()}
