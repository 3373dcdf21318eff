"""Every notebook runs top to bottom on CPU (as CI does; Colab runs the same cells on TPU), and
the committed notebooks carry their outputs (pictures included) with no machine paths."""

import nbformat
import pytest

from experiments import notebooks

NOTEBOOKS = sorted(notebooks.NOTEBOOK_DIR.glob("*.ipynb"))


def _pictures(notebook) -> int:
  return sum("image/png" in output.get("data", {})
             for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def test_committed_notebooks_carry_their_outputs():
  assert NOTEBOOKS
  for path in NOTEBOOKS:
    notebook = nbformat.read(path, as_version=4)
    unrun = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code"
             and c.execution_count is None]
    assert not unrun, f"{path.name} cells {unrun} have no outputs: python -m " \
                      f"experiments.notebooks {path.stem}"
    assert not notebooks.problems(notebook), path.name
    if path.stem in ("attention_kernels", "finetune_minilm", "train_gpt_kjv", "speech_whisper"):
      assert _pictures(notebook) >= 1, f"{path.name} shows no attention map"


def test_outputs_with_machine_paths_or_errors_are_refused():
  cell = nbformat.v4.new_code_cell("print(workdir)")
  cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="/tmp/tmpab12/run\n"),
                  nbformat.v4.new_output("error", ename="ValueError", evalue="bad",
                                         traceback=[])]
  found = notebooks.problems(nbformat.v4.new_notebook(cells=[cell]))
  assert found == ["cell 0 shows a machine path: /tmp/tmpab12/run", "cell 0: ValueError: bad"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
  assert not notebooks.problems(notebooks.execute(path, timeout=600))
