"""Corpus BLEU (Papineni et al. 2002) with sacreBLEU's default "13a" tokenization: BLEU-4,
uniform weights, brevity penalty, no smoothing; and corpus chrF (Popovic 2015) as sacreBLEU
computes it: character 1- to 6-grams with white space removed, beta 2. Scores are 0-100."""

from __future__ import annotations

import collections
import math
import re

_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(line: str) -> list[str]:
  line = f" {line.strip()} "
  for pattern, replacement in _13A:
    line = pattern.sub(replacement, line)
  return line.split()


def _ngrams(tokens, n):
  return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: list[str], references: list[str], max_order: int = 4) -> float:
  """BLEU of hypotheses against one reference each."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references.")
  matches, totals = [0] * max_order, [0] * max_order
  hyp_len = ref_len = 0
  for hyp, ref in zip(hypotheses, references):
    h, r = tokenize_13a(hyp), tokenize_13a(ref)
    hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
    for n in range(1, max_order + 1):
      h_ngrams, r_ngrams = _ngrams(h, n), _ngrams(r, n)
      matches[n - 1] += sum(min(c, r_ngrams[g]) for g, c in h_ngrams.items())
      totals[n - 1] += max(len(h) - n + 1, 0)
  if hyp_len == 0 or min(matches) == 0:
    return 0.0
  log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
  brevity = min(0.0, 1.0 - ref_len / hyp_len)
  return 100.0 * math.exp(log_precision + brevity)


def corpus_chrf(hypotheses: list[str], references: list[str], max_order: int = 6,
                beta: float = 2.0) -> float:
  """chrF of hypotheses against one reference each: n-gram counts summed over the corpus;
  precision and recall averaged over the orders both sides have, then their F-beta."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references.")
  stats = [[0, 0, 0] for _ in range(max_order)]  # hypothesis, reference, matching n-grams
  for hyp, ref in zip(hypotheses, references):
    h, r = "".join(hyp.split()), "".join(ref.split())
    for n in range(1, max_order + 1):
      h_ngrams, r_ngrams = _ngrams(h, n), _ngrams(r, n)
      stats[n - 1][0] += sum(h_ngrams.values()) if r_ngrams else 0  # as sacreBLEU counts
      stats[n - 1][1] += sum(r_ngrams.values())
      stats[n - 1][2] += sum(min(c, r_ngrams[g]) for g, c in h_ngrams.items())
  effective = [(m / h, m / r) for h, r, m in stats if h and r]  # (precision, recall)
  if not effective:
    return 0.0
  precision = sum(p for p, _ in effective) / len(effective)
  recall = sum(r for _, r in effective) / len(effective)
  if precision + recall == 0:
    return 0.0
  factor = beta ** 2
  return 100.0 * (1 + factor) * precision * recall / (factor * precision + recall)
