"""Every committed notebook is clean and papermill-ready (the tests that run them are elsewhere)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill as pm
import pytest

from rapid_utils import paths

NOTEBOOKS = sorted(paths.notebooks_dir().glob("*.ipynb"))


def test_every_numbered_notebook_is_here() -> None:
    """Sorted by name, the notebooks read in order (01b, for a chips corpus, follows 01)."""
    assert [p.stem.split("_")[0] for p in NOTEBOOKS] == [
        "01", "01b", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "rapidai4eo-byol"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert code[0].metadata.get("tags") == ["parameters"]
    # papermill parses every assignment (no annotations, no "=" in comments)
    inspected = pm.inspect_notebook(path)
    # every notebook writes where the batch says; 07 renders its sites and reads no run
    assert {"figures_dir", "runs_dir"} - ({"runs_dir"} if path.stem == "07_realism" else set()
                                          ) <= set(inspected)
    assert len(inspected) == sum(1 for line in code[0].source.splitlines() if " = " in line)
