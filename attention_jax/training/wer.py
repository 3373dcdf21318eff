"""Word and character error rates of transcripts, after Whisper's English text normalisation.

    wer.error_rates(hypotheses, references)   # {"wer": 0.12, "cer": 0.05}

`normalize_english` follows Whisper's EnglishTextNormalizer step by step (lower case; bracketed
and parenthesised text and filler words removed; contractions and titles spelled out;
symbols and diacritics removed) except two steps that need data or are moot here: numbers
are left as they are spoken (the KJV spells them out: "an hundred and five"), and British
spellings are not mapped to American ones (Whisper reads that map from a downloaded file).
The rates are corpus rates, as jiwer computes them: the edit distance summed over all pairs,
over the reference length summed.
"""

from __future__ import annotations

import re
import unicodedata

_FILLERS = r"\b(hmm|mm|mhm|mmm|uh|um)\b"
_REPLACEMENTS = {
    # common contractions
    r"\bwon't\b": "will not", r"\bcan't\b": "can not", r"\blet's\b": "let us",
    r"\bain't\b": "aint", r"\by'all\b": "you all", r"\bwanna\b": "want to",
    r"\bgotta\b": "got to", r"\bgonna\b": "going to", r"\bi'ma\b": "i am going to",
    r"\bimma\b": "i am going to", r"\bwoulda\b": "would have", r"\bcoulda\b": "could have",
    r"\bshoulda\b": "should have", r"\bma'am\b": "madam",
    # titles and prefixes
    r"\bmr\b": "mister ", r"\bmrs\b": "missus ", r"\bst\b": "saint ", r"\bdr\b": "doctor ",
    r"\bprof\b": "professor ", r"\bcapt\b": "captain ", r"\bgov\b": "governor ",
    r"\bald\b": "alderman ", r"\bgen\b": "general ", r"\bsen\b": "senator ",
    r"\brep\b": "representative ", r"\bpres\b": "president ", r"\brev\b": "reverend ",
    r"\bhon\b": "honorable ", r"\basst\b": "assistant ", r"\bassoc\b": "associate ",
    r"\blt\b": "lieutenant ", r"\bcol\b": "colonel ", r"\bjr\b": "junior ",
    r"\bsr\b": "senior ", r"\besq\b": "esquire ",
    # perfect tenses
    r"'d been\b": " had been", r"'s been\b": " has been", r"'d gone\b": " had gone",
    r"'s gone\b": " has gone", r"'d done\b": " had done", r"'s got\b": " has got",
    # general contractions
    r"n't\b": " not", r"'re\b": " are", r"'s\b": " is", r"'d\b": " would", r"'ll\b": " will",
    r"'t\b": " not", r"'ve\b": " have", r"'m\b": " am",
}
# Letters NFKD does not decompose, spelled in ASCII.
_LETTERS = {"œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE", "ß": "ss",
            "ẞ": "SS", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "th",
            "ł": "l", "Ł": "L"}


def _without_symbols_and_diacritics(text: str, keep: str) -> str:
  """Marks dropped after NFKD, other marks, symbols and punctuation to spaces, except `keep`."""
  def character(c):
    if c in keep:
      return c
    if c in _LETTERS:
      return _LETTERS[c]
    category = unicodedata.category(c)
    if category == "Mn":
      return ""
    return " " if category[0] in "MSP" else c
  return "".join(character(c) for c in unicodedata.normalize("NFKD", text))


def normalize_english(text: str) -> str:
  """`text` as Whisper's English normaliser compares it (see the module's docstring)."""
  s = text.lower()
  s = re.sub(r"[<\[][^>\]]*[>\]]", "", s)
  s = re.sub(r"\(([^)]+?)\)", "", s)
  s = re.sub(_FILLERS, "", s)
  s = re.sub(r"\s+'", "'", s)
  for pattern, replacement in _REPLACEMENTS.items():
    s = re.sub(pattern, replacement, s)
  s = re.sub(r"(\d),(\d)", r"\1\2", s)
  s = re.sub(r"\.([^0-9]|$)", r" \1", s)
  s = _without_symbols_and_diacritics(s, keep=".%$¢€£")
  s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s)
  s = re.sub(r"([^0-9])%", r"\1 ", s)
  return re.sub(r"\s+", " ", s).strip()


def edit_distance(hypothesis, reference) -> int:
  """Levenshtein distance between two sequences (substitutions, insertions, deletions)."""
  previous = list(range(len(reference) + 1))
  for i, h in enumerate(hypothesis, 1):
    current = [i]
    for j, r in enumerate(reference, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (h != r)))
    previous = current
  return previous[-1]


def error_rates(hypotheses, references, normalize=normalize_english) -> dict:
  """{"wer", "cer"}: corpus word and character error rates of `hypotheses` against
  `references` (lists of str) after `normalize` (None: compare as given). Characters count
  within each normalised text, spaces included, as jiwer's cer."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
  normalize = normalize or (lambda text: text)
  word_edits = word_count = char_edits = char_count = 0
  for hypothesis, reference in zip(hypotheses, references):
    hypothesis, reference = normalize(hypothesis), normalize(reference)
    word_edits += edit_distance(hypothesis.split(), reference.split())
    word_count += len(reference.split())
    char_edits += edit_distance(hypothesis, reference)
    char_count += len(reference)
  if word_count == 0:
    raise ValueError("the references are empty after normalisation; nothing to score.")
  return {"wer": word_edits / word_count, "cer": char_edits / char_count}
