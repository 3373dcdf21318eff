"""Our corpus BLEU and chrF against sacreBLEU (an independent implementation) and by hand."""

import pytest

import random

from attention_jax.training.bleu import corpus_bleu, corpus_chrf, tokenize_13a

HYPOTHESES = ["In the beginning God created the heaven and the earth.",
              "And the earth was without form, and void; and darkness upon the deep.",
              "Let there be light: and there was light!",
              "It costs 3.5 shekels, said he."]
REFERENCES = ["In the beginning God created the heaven and the earth.",
              "And the earth was without form, and void; and darkness was upon the face of the "
              "deep.",
              "And God said, Let there be light: and there was light.",
              "It cost 3.5 shekels, he said."]


def test_matches_sacrebleu():
  sacrebleu = pytest.importorskip("sacrebleu")
  want = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], smooth_method="none").score
  assert corpus_bleu(HYPOTHESES, REFERENCES) == pytest.approx(want, abs=1e-9)


def test_by_hand():
  assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == 100.0
  # 7 tokens vs 6: precisions 6/7, 5/6, 4/5, 3/4, no brevity penalty: (3/7) ** (1/4).
  assert corpus_bleu(["the cat sat on the mat today"], ["the cat sat on the mat"]) == (
      pytest.approx(100 * (3 / 7) ** 0.25))
  assert corpus_bleu(["dog"], ["the cat sat"]) == 0.0
  assert tokenize_13a("Hello, world. It costs 3.5-4!") == [
      "Hello", ",", "world", ".", "It", "costs", "3.5", "-", "4", "!"]
  with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
    corpus_bleu(["a", "b"], ["a"])


def test_chrf_matches_sacrebleu():
  sacrebleu = pytest.importorskip("sacrebleu")
  assert corpus_chrf(HYPOTHESES, REFERENCES) == pytest.approx(
      sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score, abs=1e-9)
  # Random corpora, with empty hypotheses and references shorter than 6 characters.
  rng = random.Random(0)
  words = "the a God said light , . dijo luz ñ Dios".split()
  for _ in range(50):
    size = rng.randint(1, 4)
    hyps = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(size)]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(size)]
    assert corpus_chrf(hyps, refs) == pytest.approx(
        sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-9)


def test_chrf_by_hand():
  assert corpus_chrf(["the cat"], ["thecat"]) == 100.0  # white space is not counted
  assert corpus_chrf([""], ["a cat"]) == 0.0
  # "ab" vs "abc": 1-grams P=1 R=2/3, 2-grams P=1 R=1/2; averages P=1, R=7/12; beta 2.
  precision, recall = 1.0, 7 / 12
  assert corpus_chrf(["ab"], ["abc"]) == pytest.approx(
      100 * 5 * precision * recall / (4 * precision + recall))
  with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
    corpus_chrf(["a"], ["a", "b"])
