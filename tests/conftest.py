"""Shared fixtures: one small synthetic corpus per session, and a disposable copy of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["MPLBACKEND"] = "agg"  # headless figures, set before anything imports matplotlib

from rapid_utils import notebook_batch, paths  # noqa: E402
from rapid_utils.corpus.synthetic import generate_corpus  # noqa: E402

TINY = {"n_sites": 24, "seed": 3, "size": 32}


def pytest_configure(config: pytest.Config) -> None:
    # rasterio and rioxarray still use Affine `*` internally; the warning is theirs, not ours
    config.addinivalue_line("filterwarnings", "ignore:Use `@` matmul:PendingDeprecationWarning")


@pytest.fixture(scope="session")
def tiny_settings() -> dict:
    """The generator settings of `tiny_corpus`."""
    return dict(TINY)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24-site, 32 px synthetic corpus with the default 24 monthly dates; do not modify it."""
    return generate_corpus(
        tmp_path_factory.mktemp("corpus") / "c", **TINY, workers=1, progress=False
    )


@pytest.fixture
def corpus_copy(tiny_corpus: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny corpus, for tests that damage or delete files."""
    return Path(shutil.copytree(tiny_corpus, tmp_path / "c"))


@pytest.fixture
def run_notebooks(monkeypatch: pytest.MonkeyPatch):
    """Execute notebooks in order through the batch runner; fail the test on any error.

    Call it with ({notebook name: parameters}, corpus, output folder). The kernel finds rapid_utils
    even where the package is not installed (PYTHONPATH), and draws with the agg backend.
    """
    root = str(paths.notebooks_dir().parent)
    pythonpath = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    monkeypatch.setenv("MPLBACKEND", "agg")

    def run(parameters_by_name: dict[str, dict], corpus: Path, output_dir: Path) -> None:
        """Figures go to output_dir/figures; runs_dir is output_dir/runs, given relative to
        the notebooks folder so relative paths are exercised too."""
        common = {
            "corpus_dir": str(corpus),
            "figures_dir": str(output_dir / "figures"),
            "runs_dir": os.path.relpath(output_dir / "runs", paths.notebooks_dir()),
        }
        for name, parameters in parameters_by_name.items():
            outcome = notebook_batch.run_notebook(name, output_dir / f"{name}.ipynb",
                                                  common | parameters)
            assert outcome.error is None, f"{name}: {outcome.error} (see {outcome.output})"

    return run
