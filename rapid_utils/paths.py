"""Where things live. Nothing else in the project builds paths by hand.

Inputs (corpora) live under `data/`, generated outputs under `runs/{profile}/` and
`figures/{profile}/`. Set RAPID_HOME to put them somewhere other than the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent

# File names inside a runs folder (notebooks receive the folder as a parameter).
BAND_STATS_FILE = "band_stats.json"
SPLITS_FILE = "splits.csv"
SPLITS_RECORD_FILE = "splits.json"  # the inputs and content hash of splits.csv
CHECKPOINT_FILE = "checkpoint.pt"  # inside a BYOL run folder


def data_location(location: str | Path) -> str | Path:
    """A corpus, chips spec or packed store as training opens it: local paths made absolute
    (notebooks run in notebooks/), fsspec URLs (`s3://...`, a remote store) unchanged."""
    if "://" in str(location):
        return str(location)
    return Path(location).expanduser().resolve()


def project_root() -> Path:
    """The compendium's root: $RAPID_HOME, else the repository holding this package."""
    if "RAPID_HOME" in os.environ:
        return Path(os.environ["RAPID_HOME"]).resolve()
    if (_PACKAGE_PARENT / "pyproject.toml").is_file():
        return _PACKAGE_PARENT
    return Path.cwd()


def notebooks_dir() -> Path:
    """The numbered source notebooks (inputs to papermill)."""
    return _PACKAGE_PARENT / "notebooks"


def params_dir() -> Path:
    """The YAML parameter profiles."""
    return _PACKAGE_PARENT / "params"


def profile_path(profile: str) -> Path:
    """The YAML file of a named profile (`ci`, `quick`, `poster`, ...)."""
    return params_dir() / f"{profile}.yaml"


def synthetic_corpus_dir(profile: str) -> Path:
    """Where the embedded synthetic corpus of a profile is generated."""
    return project_root() / "data" / f"synthetic-{profile}"


def example_chips_dir(profile: str) -> Path:
    """Where the example chips folder of a profile is generated (`corpus: example-chips`)."""
    return project_root() / "data" / f"example-chips-{profile}"


def chips_spec_path(profile: str) -> Path:
    """The chips spec the batch writes from a profile's `chips_*` keys."""
    return runs_dir(profile) / "chips.yaml"


def classmaps_dir() -> Path:
    """Class maps from other label sets into the poster's 7 classes (YAML)."""
    return params_dir() / "classmaps"


def runs_dir(profile: str) -> Path:
    """Executed notebooks, results files and derived data of a profile."""
    return project_root() / "runs" / profile


def figures_dir(profile: str) -> Path:
    """Figures of a profile."""
    return project_root() / "figures" / profile


def byol_run_dir(runs: Path, positives: str, seed: int) -> Path:
    """Checkpoint folder of one BYOL pretraining run inside a runs folder."""
    return Path(runs) / "byol" / f"byol_{positives}_seed{seed}"


def results_dir(runs: Path) -> Path:
    """Fine-tuning results files (one JSON per run) inside a runs folder."""
    return Path(runs) / "results"


def model_dir(runs: Path, results_file: str | Path) -> Path:
    """Where the fine-tuned model of one results file is saved (weights and model.json)."""
    return Path(runs) / "models" / Path(results_file).stem


def label_efficiency_dir(runs: Path) -> Path:
    """The label-efficiency study's records, subsets and fine-tuning results in a runs folder."""
    return Path(runs) / "label_efficiency"
