"""Our corpus BLEU against sacreBLEU (an independent implementation) and by hand."""

import pytest

from attention_jax.training.bleu import corpus_bleu, tokenize_13a

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
