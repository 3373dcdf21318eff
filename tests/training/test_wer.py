"""WER/CER against jiwer, and our English normaliser against transformers' port of Whisper's
(independent implementations), on KJV verses and worked examples."""

import random
import re

import pytest

from attention_jax.data import sword
from attention_jax.training import wer

# Number words ("O" and "Oh" too, read as zero): Whisper's normaliser turns them into digits,
# ours leaves them (see wer.py).
_NUMBERS = re.compile(r"\b(zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|"
                      r"twelve|\w+teen|\w+ty|hundred|thousand|million|first|second|third|"
                      r"\w+th|half|twice|once|double|\d)\w*\b|\b(o|oh)\b", re.IGNORECASE)
EXAMPLES = ["Mr. Smith's [inaudible] dog (barking) won't stop, um, it's gone!",
            "Café naïve façade — Œuvre; ß & søn?", "They'd been there; we'll see; I'm sure.",
            "St. Peter's Gate, Dr. Who & Prof. X.", "You can't   do   that...  \"right\"?"]


def test_normalizer_equals_whisper_on_kjv_and_examples():
  english_normalizer = pytest.importorskip("transformers.models.whisper.english_normalizer")
  whisper = english_normalizer.EnglishTextNormalizer({})
  verses = [v for v in sword.read_module("kjv")[:3000] if v and not _NUMBERS.search(v)]
  assert len(verses) > 500
  for text in verses + EXAMPLES:
    assert wer.normalize_english(text) == whisper(text).strip(), text


def test_normalizer_worked_examples():
  assert wer.normalize_english("The LORD's word, [sic] unto Moses.") == "the lord is word unto moses"
  assert wer.normalize_english("Won't you? Mr. Jones") == "will not you mister jones"


def test_error_rates_equal_jiwer():
  jiwer = pytest.importorskip("jiwer")
  rng = random.Random(0)
  verses = [v for v in sword.read_module("kjv")[100:400] if v]
  references = [wer.normalize_english(v) for v in verses]
  hypotheses = []
  for reference in references:
    words = reference.split()
    for _ in range(rng.randint(0, 4)):  # substitute, delete, insert
      i = rng.randrange(len(words))
      edit = rng.choice("sdi")
      if edit == "s":
        words[i] = rng.choice(words)
      elif edit == "d" and len(words) > 1:
        del words[i]
      else:
        words.insert(i, rng.choice(references).split()[0])
    hypotheses.append(" ".join(words))
  got = wer.error_rates(hypotheses, references, normalize=None)
  assert got["wer"] == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)
  assert got["cer"] == pytest.approx(jiwer.cer(references, hypotheses), abs=1e-12)
  assert 0.02 < got["wer"] < 0.5


def test_error_rates_by_hand():
  # one substitution and one deletion over 6 reference words; CER counts spaces
  got = wer.error_rates(["the cat sat mat"], ["the cat sat on a mat"], normalize=None)
  assert got["wer"] == pytest.approx(2 / 6)
  assert got["cer"] == pytest.approx(5 / 20)
  assert wer.error_rates(["In the beginning."], ["in the BEGINNING"]) == {"wer": 0.0, "cer": 0.0}
  with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
    wer.error_rates(["a", "b"], ["a"])
