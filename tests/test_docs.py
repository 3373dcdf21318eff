"""The README and docs/ stay navigable: every relative link resolves, the README stays short,
and every measured table says when, where and at which commit it was measured."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _pages():
  return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_resolves():
  broken = []
  for page in _pages():
    for target in LINK.findall(page.read_text()):
      if "://" not in target and not (page.parent / target).exists():
        broken.append(f"{page.relative_to(ROOT)} -> {target}")
  assert not broken, broken


def test_the_readme_is_short_and_links_every_doc_page():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 150
  for page in sorted((ROOT / "docs").glob("*.md")):
    assert f"docs/{page.name}" in readme, page.name


def test_every_result_is_stamped():
  results = sorted((ROOT / "docs" / "results").glob("*.md"))
  assert results
  for page in results:
    head = page.read_text().split("\n\n", 2)[1]
    assert re.search(r"- Measured: 20\d\d-\d\d-\d\d", head), page.name
    assert "- Machine: " in head and re.search(r"- Commits?: `[0-9a-f]{7}", head), page.name
    assert page.name[:10] in head, page.name  # the file's date is the measurement's
