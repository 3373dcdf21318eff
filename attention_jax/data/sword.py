"""Reader for SWORD zText Bible modules (Debian's sword-text-* packages), no SWORD library.

Per testament ("ot", "nt") a module has three files: `.bzs`, 12-byte records <III (offset,
compressed size, uncompressed size) of zlib blocks in `.bzz`; `.bzv`, 10-byte records <IIH
(block, start, size) of each entry inside its decompressed block (size 0: an empty entry such
as a heading slot). Entries are in versification order, so the i-th entry of two modules with
the same versification is the same verse. The text is OSIS XML: notes are dropped, other tags
stripped, white space collapsed.
"""

from __future__ import annotations

import html
import os
import re
import struct
import zlib

SWORD_ROOT = "/usr/share/sword/modules/texts/ztext"
MODULES = {  # name -> (directory, Debian package)
    "kjv": ("engKJV2006eb", "sword-text-kjv"),
    "reina_valera": ("spaRV1909eb", "sword-text-sparv"),
    "web": ("engWEB2015eb", "sword-text-web"),  # World English Bible
}

_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_NOTE_BEFORE_WORD = re.compile(r"<note\b.*?</note>(?=<w\b)", re.DOTALL)  # God<note/><w>created
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def split_of(index: int) -> str:
  """Deterministic 96/2/2 split by position: every 50th item validation, the next test."""
  return {0: "validation", 1: "test"}.get(index % 50, "train")


def module_dir(name: str, root: str = SWORD_ROOT) -> str:
  """The module's directory; a clear error naming the Debian package if it is missing."""
  if name not in MODULES:
    raise ValueError(f"unknown SWORD module {name!r}; known: {', '.join(sorted(MODULES))}.")
  directory, package = MODULES[name]
  path = os.path.join(root, directory.lower() if not os.path.isdir(
      os.path.join(root, directory)) else directory)
  if not os.path.isfile(os.path.join(path, "ot.bzs")):
    raise FileNotFoundError(
        f"the SWORD module {directory} ({name}) is not installed (looked in {path}). Install "
        f"it with: sudo apt-get install {package}")
  return path


def clean_osis(text: str) -> str:
  """OSIS XML of one verse -> plain text."""
  text = _TAG.sub("", _NOTE.sub("", _NOTE_BEFORE_WORD.sub(" ", text)))
  return _SPACE.sub(" ", html.unescape(text)).strip()


def read_entries(path: str) -> list[str]:
  """All entries of a module directory, OT then NT, cleaned (empty entries give '')."""
  entries = []
  for testament in ("ot", "nt"):
    with open(os.path.join(path, f"{testament}.bzs"), "rb") as f:
      blocks_index = [struct.unpack("<III", rec) for rec in _records(f.read(), 12)]
    with open(os.path.join(path, f"{testament}.bzz"), "rb") as f:
      compressed = f.read()
    blocks = {}
    with open(os.path.join(path, f"{testament}.bzv"), "rb") as f:
      for rec in _records(f.read(), 10):
        block, start, size = struct.unpack("<IIH", rec)
        if size == 0:
          entries.append("")
          continue
        if block not in blocks:
          offset, comp_size, _ = blocks_index[block]
          blocks[block] = zlib.decompress(compressed[offset:offset + comp_size])
        raw = blocks[block][start:start + size].decode("utf-8", errors="replace")
        entries.append(clean_osis(raw))
  return entries


def _records(data: bytes, size: int):
  return (data[i:i + size] for i in range(0, len(data) - size + 1, size))


def read_module(name: str, root: str = SWORD_ROOT) -> list[str]:
  """Entries of module `name` ("kjv", "reina_valera", ...)."""
  return read_entries(module_dir(name, root))


# The KJV versification's books and their chapter counts (SWORD's "KJV" scheme, which the
# KJV and Reina-Valera modules use): 39 books, 929 chapters; 27 books, 260 chapters.
KJV_BOOKS = (
    ("Genesis", 50), ("Exodus", 40), ("Leviticus", 27), ("Numbers", 36), ("Deuteronomy", 34),
    ("Joshua", 24), ("Judges", 21), ("Ruth", 4), ("1 Samuel", 31), ("2 Samuel", 24),
    ("1 Kings", 22), ("2 Kings", 25), ("1 Chronicles", 29), ("2 Chronicles", 36), ("Ezra", 10),
    ("Nehemiah", 13), ("Esther", 10), ("Job", 42), ("Psalms", 150), ("Proverbs", 31),
    ("Ecclesiastes", 12), ("Song of Solomon", 8), ("Isaiah", 66), ("Jeremiah", 52),
    ("Lamentations", 5), ("Ezekiel", 48), ("Daniel", 12), ("Hosea", 14), ("Joel", 3),
    ("Amos", 9), ("Obadiah", 1), ("Jonah", 4), ("Micah", 7), ("Nahum", 3), ("Habakkuk", 3),
    ("Zephaniah", 3), ("Haggai", 2), ("Zechariah", 14), ("Malachi", 4),
    ("Matthew", 28), ("Mark", 16), ("Luke", 24), ("John", 21), ("Acts", 28), ("Romans", 16),
    ("1 Corinthians", 16), ("2 Corinthians", 13), ("Galatians", 6), ("Ephesians", 6),
    ("Philippians", 4), ("Colossians", 4), ("1 Thessalonians", 5), ("2 Thessalonians", 3),
    ("1 Timothy", 6), ("2 Timothy", 4), ("Titus", 3), ("Philemon", 1), ("Hebrews", 13),
    ("James", 5), ("1 Peter", 5), ("2 Peter", 3), ("1 John", 5), ("2 John", 1), ("3 John", 1),
    ("Jude", 1), ("Revelation", 22))
OLD_TESTAMENT_BOOKS = 39
# Chapters followed by a heading slot that is not empty (the KJV module puts "א ALEPH." in
# Psalm 119's): their verse counts, since an empty entry does not end them.
VERSES_BEFORE_A_TITLED_HEADING = {("Psalms", 118): 29}


def chapters(name: str = "kjv", root: str = SWORD_ROOT) -> list[tuple[str, int, list[str]]]:
  """(book, chapter number, verses) of every chapter of a KJV-versified module, in order.

  A testament's entries are: module and testament headings, then per book its heading (a
  title, or empty), then per chapter a heading (empty but for VERSES_BEFORE_A_TITLED_HEADING)
  followed by the verses. Misaligned entries raise a ValueError.
  """
  entries = read_module(name, root)
  out, i, titled = [], 0, False
  for testament in (KJV_BOOKS[:OLD_TESTAMENT_BOOKS], KJV_BOOKS[OLD_TESTAMENT_BOOKS:]):
    i += 2  # the module and testament headings
    for book_index, (book, count) in enumerate(testament):
      i += 1  # the book's heading
      for chapter in range(1, count + 1):
        if entries[i] and not titled:
          raise ValueError(f"{name}: expected the empty heading of {book} {chapter} at entry "
                           f"{i}, found {entries[i][:40]!r}: not the KJV versification?")
        end = i + 1
        while end < len(entries) and entries[end]:
          end += 1
        if chapter == count and book_index + 1 < len(testament):
          end -= 1  # the next book's heading ends this run
        titled = (book, chapter) in VERSES_BEFORE_A_TITLED_HEADING
        if titled:
          end = i + 1 + VERSES_BEFORE_A_TITLED_HEADING[book, chapter]
        out.append((book, chapter, entries[i + 1:end]))
        i = end
  if i != len(entries):
    raise ValueError(f"{name}: {len(entries) - i} entries left after the last chapter.")
  return out
