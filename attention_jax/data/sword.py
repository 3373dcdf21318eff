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
