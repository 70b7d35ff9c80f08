"""The papermill batch: profiles in, executed notebooks and figures out.

A profile (`params/{name}.yaml`) is a flat set of parameters. `reproduce` generates the
embedded corpus when the profile asks for it, then executes the numbered notebooks in
order, each receiving the profile values it declares in its `parameters` cell.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
import yaml

from rapid_utils import paths
from rapid_utils.corpus.synthetic import generate_corpus

log = logging.getLogger(__name__)

NOTEBOOKS = ("01_data_exploration", "02_label_mapping")
SYNTHETIC = "synthetic"
REQUIRED_KEYS = ("corpus", "seed")


class ProfileError(ValueError):
    """A parameter profile that is missing, unreadable or has bad values."""


def load_profile(profile: str, extra_files: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """Read `params/{profile}.yaml`, then update it with each extra YAML file in turn."""
    merged: dict[str, Any] = {}
    for path in (paths.profile_path(profile), *map(Path, extra_files)):
        if not path.is_file():
            known = sorted(p.stem for p in paths.params_dir().glob("*.yaml"))
            raise ProfileError(f"no parameter file {path} (known profiles: {', '.join(known)})")
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ProfileError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(content, dict):
            raise ProfileError(f"{path} must be a flat mapping of parameter: value")
        merged.update(content)
    missing = [key for key in REQUIRED_KEYS if key not in merged]
    if missing:
        raise ProfileError(f"profile {profile!r} lacks {', '.join(missing)}")
    return merged


def resolve_corpus(profile: str, values: dict[str, Any]) -> Path:
    """The corpus folder of a profile, generating the embedded corpus if it asks for it."""
    if values["corpus"] != SYNTHETIC:
        return Path(values["corpus"]).expanduser().resolve()
    return generate_corpus(
        paths.synthetic_corpus_dir(profile),
        n_sites=int(values.get("synth_sites", 1000)),
        seed=int(values["seed"]),
        size=int(values.get("synth_size", 64)),
        dates=values.get("synth_dates", "monthly"),
        workers=int(values.get("workers", 2)),
    )


@dataclass
class NotebookRun:
    """Outcome of one executed notebook."""

    name: str
    output: Path
    seconds: float
    error: str | None = None


def run_notebook(name: str, output: Path, parameters: dict[str, Any]) -> NotebookRun:
    """Execute one notebook with papermill, passing only the parameters it declares."""
    source = paths.notebooks_dir() / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(source))
    chosen = {key: value for key, value in parameters.items() if key in declared}
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(output), parameters=chosen, kernel_name="python3",
            cwd=str(paths.notebooks_dir()), progress_bar=False,
        )
    except papermill.PapermillExecutionError as error:
        return NotebookRun(name, output, time.perf_counter() - start,
                           f"{error.ename}: {error.evalue}")
    return NotebookRun(name, output, time.perf_counter() - start)


def reproduce(profile: str, extra_files: tuple[str | Path, ...] = ()) -> list[NotebookRun]:
    """Run the whole study for a profile; executed notebooks land in `runs/{profile}/`."""
    values = load_profile(profile, extra_files)
    corpus = resolve_corpus(profile, values)
    parameters = values | {
        "corpus_dir": str(corpus),
        "runs_dir": str(paths.runs_dir(profile)),
        "figures_dir": str(paths.figures_dir(profile)),
    }
    runs = []
    for number, name in enumerate(NOTEBOOKS, start=1):
        output = paths.runs_dir(profile) / "notebooks" / f"{name}.ipynb"
        run = run_notebook(name, output, parameters)
        status = "done" if run.error is None else f"FAILED ({run.error})"
        log.info("[%d/%d] %s %s in %.1f s -> %s", number, len(NOTEBOOKS), name, status,
                 run.seconds, output)
        runs.append(run)
    return runs
