r"""Runs the notebooks top to bottom and saves them with their outputs, so the repository page
shows the pictures and numbers without running anything.

    python -m experiments.notebooks                       # every notebook in notebooks/
    python -m experiments.notebooks attention_kernels     # just these

A notebook whose outputs show a machine path (a temp directory, the checkout, site-packages)
or an error is not saved: the run stops and names the cell.
"""

from __future__ import annotations

import pathlib
import re
import sys

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
# Absolute paths of this machine that outputs must not show (the repository page is public).
MACHINE_PATH = re.compile(r"(/tmp/|/var/folders/|/home/|/Users/|/work/|/root/|/content/|"
                          r"site-packages|[A-Z]:\\)")


def problems(notebook) -> list[str]:
  """What keeps a notebook's outputs from being committed: errors and machine paths, per cell."""
  found = []
  for index, cell in enumerate(notebook.cells):
    for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
      if output.output_type == "error":
        found.append(f"cell {index}: {output.ename}: {output.evalue}")
        continue
      texts = [output.get("text", "")] + [
          value for kind, value in output.get("data", {}).items() if kind.startswith("text/")]
      for text in texts:
        text = "".join(text) if isinstance(text, list) else text
        match = MACHINE_PATH.search(text)
        if match:
          line = next(l for l in text.splitlines() if match.group(0) in l)
          found.append(f"cell {index} shows a machine path: {line.strip()[:200]}")
  return found


def execute(path: pathlib.Path, timeout: int = 900):
  """Runs the notebook at `path` in a fresh python3 kernel (in its directory); returns it."""
  import nbformat  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  notebook = nbformat.read(path, as_version=4)
  NotebookClient(notebook, timeout=timeout, kernel_name="python3", allow_errors=True,
                 record_timing=False, resources={"metadata": {"path": str(path.parent)}}
                 ).execute()
  return notebook


def main(argv: list[str]) -> int:
  import nbformat  # pylint: disable=g-import-not-at-top
  names = argv or sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
  for name in names:
    path = NOTEBOOK_DIR / f"{name.removesuffix('.ipynb')}.ipynb"
    if not path.exists():
      print(f"no notebook {path.name} in {NOTEBOOK_DIR}", file=sys.stderr)
      return 2
    print(f"running {path.name} ...", flush=True)
    notebook = execute(path)
    found = problems(notebook)
    if found:
      print(f"{path.name} not saved:\n  " + "\n  ".join(found), file=sys.stderr)
      return 1
    nbformat.write(notebook, path)
    print(f"saved {path.name} with its outputs", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
