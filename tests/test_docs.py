"""`make docs`: the executed notebooks a reader can open without a run."""

from __future__ import annotations

import pytest

from rapid_utils import docs, paths


def test_docs_publish_every_notebook_and_one_fine_tuning_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RAPID_HOME", str(tmp_path))
    rendered = paths.runs_dir("ci") / "html"
    rendered.mkdir(parents=True)
    names = ["01_data_exploration", "03_byol_pretraining", "04_finetuning_byol_frac-0.01_seed0",
             "04_finetuning_scratch_frac-1.0_seed0", "06_label_efficiency", "index"]
    for name in names:
        (rendered / f"{name}.html").write_text(f"<p>{name}</p>")
    out = tmp_path / "docs" / "ci" / "notebooks"
    out.mkdir(parents=True)
    (out / "05_figures_of_an_older_run.html").write_text("stale")
    copies = docs.publish_docs("ci", out)
    assert [page.stem for page in copies] == [
        "01_data_exploration", "03_byol_pretraining", "04_finetuning_byol_frac-0.01_seed0",
        "06_label_efficiency"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in copies)
    assert (out / "03_byol_pretraining.html").read_text() == "<p>03_byol_pretraining</p>"
    with pytest.raises(FileNotFoundError, match="rapid-utils docs --profile quick"):
        docs.publish_docs("quick", out)
