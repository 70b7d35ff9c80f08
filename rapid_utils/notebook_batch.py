"""The papermill batch: profiles in, executed notebooks and figures out.

A profile (`params/{name}.yaml`, read into a `profile.Profile`) holds every setting.
`reproduce` generates the embedded corpus when the profile asks for it, then executes the
numbered notebooks in order, each receiving the profile values it declares in its
`parameters` cell.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import papermill
from jupyter_client import KernelManager

from rapid_utils import models, paths, provenance, results, speed, study, train
from rapid_utils.corpus import chips, store
from rapid_utils.corpus.reader import CorpusError
from rapid_utils.corpus.synthetic import MARKER as SYNTHETIC_MARKER
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.corpus.synthetic_chips import generate_example_chips
from rapid_utils.io import atomic_path, write_json_atomic
from rapid_utils.profile import Profile, ProfileError, load_profile
from rapid_utils.progress import follow_progress, gist

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
EXAMPLE_CHIPS = "example-chips"  # generate the example chips folder (EuroSAT's format)


class CorpusCheckError(RuntimeError):
    """The profile's corpus (folder, chips or store) is missing or has no usable site."""


class MissingResultsError(RuntimeError):
    """Figures were asked for without training, and some fine-tuning results of the profile
    are missing or stale."""


def resolve_corpus(profile: str, settings: Profile) -> Path:
    """The corpus of a profile, generating the embedded corpus or example chips if it asks.

    With `chips_*` keys the corpus is a chips folder: the chips spec they describe is written
    to `paths.chips_spec_path(profile)` and returned, for the notebooks to read.
    """
    if settings.corpus == EXAMPLE_CHIPS:
        root = generate_example_chips(
            paths.example_chips_dir(profile), classes=settings.example_chips_classes,
            per_class=settings.example_chips_per_class,
            n_unlabelled=settings.example_chips_unlabelled, size=settings.example_chips_size,
            seed=settings.seed,
        )
    elif settings.corpus != SYNTHETIC:
        root = Path(settings.corpus).expanduser().resolve()
    else:
        return _synthetic_corpus(profile, settings)
    if not settings.is_chips:
        return root
    return _write_chips_spec(profile, settings, root)


def _write_chips_spec(profile: str, settings: Profile, root: Path) -> Path:
    """The chips spec of a profile's `chips_*` keys, written into its runs folder.

    `chips_labels_csv` and `chips_unlabelled` are relative to the chips folder, a
    `chips_class_map` file to the working directory (as `corpus` is).
    """
    fields = settings.chips_fields()
    class_map = fields.get("class_map")
    if isinstance(class_map, str) and class_map:
        fields["class_map"] = str(Path(class_map).expanduser().resolve())
    try:
        spec = chips.spec_from_values(fields | {"root": str(root)}, root, f"profile {profile!r}")
    except chips.ChipsError as error:
        raise ProfileError(str(error)) from error
    return spec.save(paths.chips_spec_path(profile))


def _synthetic_corpus(profile: str, settings: Profile) -> Path:
    root = generate_corpus(
        paths.synthetic_corpus_dir(profile), n_sites=settings.synth_sites, seed=settings.seed,
        size=settings.synth_size, dates=settings.synth_dates, dtype=settings.synth_dtype,
        workers=settings.workers,
    )
    if settings.store and "://" not in settings.store:
        pack_synthetic_store(root, Path(paths.data_location(settings.store)),
                             workers=settings.workers)
    return root


def pack_synthetic_store(corpus: Path, location: Path, workers: int = 2) -> Path:
    """The embedded corpus packed into the store at `location` (every date), packed anew when
    the corpus was regenerated since.

    A copy of the corpus's generator record (`SYNTHETIC.json`) is written beside the store
    once it is packed: a store of an earlier corpus would otherwise be read as this one (same
    site ids, other pixels). A store without it (an interrupted packing) is packed anew.
    """
    marker = json.loads((corpus / SYNTHETIC_MARKER).read_text())
    copy = location.with_name(f"{location.name}.{SYNTHETIC_MARKER}")  # beside: zarr warns
    finished = copy.is_file() and json.loads(copy.read_text()) == marker
    if location.exists() and not finished:
        log.info("%s was packed from another embedded corpus (or not finished): packing it "
                 "anew", location)
        shutil.rmtree(location)
    if not finished:
        report = store.pack(corpus, location, dates=marker["settings"]["dates"],
                            workers=workers)
        if not report.skipped.empty:
            raise CorpusCheckError(f"{len(report.skipped)} sites of the embedded corpus at "
                                   f"{corpus} could not be packed into {location}; "
                                   f"see PackedStore({str(location)!r}).skipped()")
        write_json_atomic(copy, marker)
    return location


@dataclass
class NotebookRun:
    """Outcome of one job of the batch: an executed notebook, or why it did not run."""

    name: str
    output: Path
    seconds: float
    error: str | None = None
    status: str = "done"  # "done", "failed", "reused" (complete result) or "skipped"


class NotebookKernel(KernelManager):
    """A kernel manager that can stop the channels of the clients it handed out.

    Given a manager, nbclient leaves its client's channels running (it cleans them up only for
    managers it created), and every such client logs "Could not destroy zmq context" when it is
    collected: twenty lines of noise at the end of a batch.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clients: list = []

    def client(self, **kwargs: Any):  # noqa: ANN201 (jupyter_client's own return type)
        made = super().client(**kwargs)
        self.clients.append(made)
        return made

    def stop_clients(self) -> None:
        """Stop the channels of every client this manager made."""
        for made in self.clients:
            made.stop_channels()


def run_notebook(name: str, output: Path, parameters: dict[str, Any]) -> NotebookRun:
    """Execute one notebook with papermill, passing only the parameters it declares.

    A failing notebook is saved with its error (papermill does that) and reported, not raised.
    """
    source = paths.notebooks_dir() / f"{name}.ipynb"
    declared = papermill.inspect_notebook(str(source))
    chosen = {key: value for key, value in parameters.items() if key in declared}
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # The kernel is reached over Unix sockets, not loopback TCP: kernel and batch share one
    # machine, and ipykernel warns on every start that TCP is unencrypted. The socket path is
    # absolute because the kernel runs in notebooks/, not in our working directory.
    with tempfile.TemporaryDirectory(prefix="rapid-kernel-") as sockets:
        kernel = NotebookKernel(kernel_name="python3", transport="ipc",
                                ip=str(Path(sockets) / "kernel"))
        try:
            papermill.execute_notebook(
                str(source), str(output), parameters=chosen, kernel_name="python3", km=kernel,
                cwd=str(paths.notebooks_dir()), progress_bar=False,
            )
        except papermill.PapermillExecutionError as error:
            return NotebookRun(name, output, time.perf_counter() - start,
                               f"{error.ename}: {error.evalue}", "failed")
        finally:  # a kernel we started is ours to stop: it holds the notebook's memory
            kernel.stop_clients()
            if kernel.has_kernel:
                kernel.shutdown_kernel()
    return NotebookRun(name, output, time.perf_counter() - start)


@dataclass
class Job:
    """One notebook execution planned by `plan_jobs`."""

    notebook: str
    output: Path
    parameters: dict[str, Any]
    scenario: str | None = None  # fine-tuning jobs: the scenario key (results.SCENARIOS)
    results_file: Path | None = None  # fine-tuning jobs: skipped when already complete


# Profile keys that mean different things for pretraining and fine-tuning, renamed to the
# notebooks' own parameter names.
ALIASES = {
    "03_byol_pretraining": {"byol_seed": "seed", "pretrain_epochs": "epochs",
                            "pretrain_batch_size": "batch_size",
                            "pretrain_weight_decay": "weight_decay",
                            "pretrain_optimizer": "optimizer"},
    "04_finetuning": {"finetune_epochs": "epochs", "finetune_batch_size": "batch_size",
                      "finetune_weight_decay": "weight_decay", "finetune_optimizer": "optimizer"},
}


def for_notebook(notebook: str, values: dict[str, Any]) -> dict[str, Any]:
    """Profile values under the notebook's own parameter names (`ALIASES`)."""
    return values | {name: values[key] for key, name in ALIASES.get(notebook, {}).items()}


def study_parameters(profile: str, settings: Profile, corpus: Path) -> dict[str, Any]:
    """What every notebook of a profile's batch receives: the profile's settings, the
    folders, the split seed (the profile's `seed`) and the BYOL seed (`pretraining_seed`)."""
    return settings.to_dict() | {
        "corpus_dir": str(corpus),
        "runs_dir": str(paths.runs_dir(profile)),
        "figures_dir": str(paths.figures_dir(profile)),
        "split_seed": settings.seed,
        "byol_seed": settings.pretraining_seed,
        # a packed store replaces the GeoTIFFs in training and evaluation (03, 04)
        "store": str(paths.data_location(settings.store)) if settings.store else "",
    }


def plan_jobs(profile: str, settings: Profile, corpus: Path) -> list[Job]:
    """Every notebook execution of a profile, in order: 01, 02, 03, 04 per scenario x seed, 05,
    06 (the label-efficiency study), then 07 (the embedded corpus against real imagery).

    A chips corpus starts with 01b_chips_overview in place of 01 and 02 (which describe the
    RapidAI4EO corpus), and runs no 07 (which measures the embedded corpus's generator).
    `scenarios: []` runs no poster scenario (and so no 05); without the key, all of them run.
    """
    runs, notebooks_out = paths.runs_dir(profile), paths.runs_dir(profile) / "notebooks"
    common = study_parameters(profile, settings, corpus)
    is_chips = chips.is_chips_corpus(corpus)
    first = ("01b_chips_overview",) if is_chips else ("01_data_exploration", "02_label_mapping")
    jobs = [Job(name, notebooks_out / f"{name}.ipynb", for_notebook(name, common))
            for name in (*first, "03_byol_pretraining")]
    for key in settings.scenarios:
        scenario = results.SCENARIO_BY_KEY[key]
        for seed in settings.finetune_seeds:
            parameters = for_notebook("04_finetuning", common) | {
                "init": scenario.init, "label_fraction": scenario.label_fraction, "seed": seed,
            }
            init = study.resolve_init(scenario.init, runs, settings.positives,
                                      settings.pretraining_seed)
            name = train.results_name(
                train.FinetuneConfig(init=init, label_fraction=scenario.label_fraction, seed=seed)
            )
            safe_key = key.replace("%", "pct")
            jobs.append(Job("04_finetuning", notebooks_out / f"04_finetuning_{safe_key}_seed{seed}"
                            ".ipynb", parameters, key, paths.results_dir(runs) / name))
    if settings.scenarios:
        jobs.append(Job("05_figures", notebooks_out / "05_figures.ipynb", common))
    jobs.append(Job("06_label_efficiency", notebooks_out / "06_label_efficiency.ipynb", common))
    if not is_chips:
        jobs.append(Job("07_realism", notebooks_out / "07_realism.ipynb", common))
    return jobs


def notebook_values(notebook: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The values a notebook runs with: its `parameters` cell's defaults, updated by the
    parameters it declares among `parameters` (what `run_notebook` passes)."""
    declared = papermill.inspect_notebook(str(paths.notebooks_dir() / f"{notebook}.ipynb"))
    defaults = {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}
    return defaults | {key: value for key, value in parameters.items() if key in declared}


@dataclass(frozen=True)
class Rerun:
    """Why a fine-tuning job runs (again) instead of reusing its results file."""

    reason: str
    replace: bool = False  # the file holds another run: the notebook must overwrite it
    announce: bool = False  # worth a progress line: a complete file was there


class _ReuseCheck:
    """Whether a fine-tuning job's results file holds the very run the job would make.

    A complete file is reused only when its parameters, split and band statistics
    fingerprints and BYOL checkpoint hash all match (`train.stale_reasons`); the study is
    loaded once per corpus and split for all jobs.
    """

    def __init__(self, corpus: str | Path | None = None,
                 indexed: study.IndexedCorpus | None = None) -> None:
        self._studies: dict[tuple, study.Study] = {}
        # the batch's corpus (as `paths.data_location` gives it), indexed before the first job
        self._indexed = {str(corpus): indexed} if indexed is not None else {}

    def why_rerun(self, job: Job) -> Rerun | None:
        """None when the job's result can be reused, else why it must run (again)."""
        try:
            existing = json.loads(job.results_file.read_text())
        except (OSError, ValueError):
            return Rerun("no results file")
        if not existing.get("complete"):
            return Rerun("results file incomplete")
        values = notebook_values(job.notebook, job.parameters)
        try:
            key = study.study_arguments(values)
            config = study.finetune_config(values, key[1])
            if key not in self._studies:
                self._studies[key] = study.load_study(*key, indexed=self._indexed.get(str(key[0])))
            data = self._studies[key]
            provenance = train.finetune_provenance(config, data.sites("train"),
                                                   data.sites("val"), data.sites("test"),
                                                   data.band_stats)
        except Exception as error:  # noqa: BLE001  the notebook will report it in full
            return Rerun(f"cannot check the result ({type(error).__name__}: {error})",
                         announce=True)
        stale = train.stale_reasons(existing, config, provenance)
        if not stale:
            return None
        return Rerun(f"stale result: {'; '.join(stale)}", replace=True, announce=True)


def _figures_jobs(profile: str, extra_files: tuple[str | Path, ...], jobs: list[Job],
                  reuse: _ReuseCheck) -> list[Job]:
    """The jobs of a figures-only batch: the fine-tuning jobs, each with a reusable result
    (else `MissingResultsError` lists those without), then the figures notebook."""
    finetuning = [job for job in jobs if job.scenario]
    if not finetuning:
        raise ProfileError(f"profile {profile!r} plans no fine-tuning scenario (scenarios: []), "
                           "so there are no figures to draw from results")
    missing = [(job, rerun) for job in finetuning if (rerun := reuse.why_rerun(job))]
    if missing:
        extra = "".join(f" --extra {path}" for path in extra_files)
        listed = "".join(f"\n- {job.results_file} ({job.scenario}, seed "
                         f"{job.parameters['seed']}): {rerun.reason}" for job, rerun in missing)
        raise MissingResultsError(
            f"{len(missing)} of the {len(finetuning)} fine-tuning results of profile "
            f"{profile!r} are missing or stale, so no figure was drawn:{listed}\nMake them "
            f"with `rapid-utils finetune --profile {profile}{extra} [--scenario KEY] "
            f"[--seed N]` (under torchrun: README, \"Scaling up\"), or run `rapid-utils "
            f"reproduce --profile {profile}{extra}` without --figures-only")
    return [*finetuning, *(job for job in jobs if job.notebook == "05_figures")]


JOB_TIMES_FILE = "job_times.csv"
"""Per-job wall times of a profile's last batch, in its runs folder (`make bench` prints them)."""


def write_job_times(outcomes: list[NotebookRun], path: Path,
                    reference_step_s: float | None = None) -> None:
    """The batch's jobs so far as CSV: job, status, seconds, when this file was written, the
    machine and its reference step (`speed.reference_step_seconds`, timed before the first
    job): the same batch takes other times on other CPUs, in proportion to that step."""
    table = pd.DataFrame({"job": [o.name for o in outcomes],
                          "status": [o.status for o in outcomes],
                          "seconds": [round(o.seconds, 1) for o in outcomes]})
    table["written"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    table["machine"] = provenance.machine()
    table["reference_step_s"] = None if reference_step_s is None else round(reference_step_s, 3)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _imagenet_unavailable(settings: Profile) -> str | None:
    """Why ImageNet weights cannot be had for the profile's arch, or None when they can."""
    try:
        models.build_model(settings.arch, 4, 7, "imagenet", settings.imagenet_weights_path or None)
    except models.WeightsUnavailableError as error:
        return str(error)
    return None


def reproduce(
    profile: str, extra_files: tuple[str | Path, ...] = (), force: bool = False,
    figures_only: bool = False,
) -> list[NotebookRun]:
    """Run the whole study for a profile; executed notebooks land in `runs/{profile}/notebooks`.

    Fine-tuning runs with a complete results file of the same run (parameters, split, band
    statistics and BYOL checkpoint) are reused, so an interrupted batch resumes, unless
    `force`; a stale one is rerun, and the progress line says why. Scenarios that cannot run
    (ImageNet weights unavailable, BYOL pretraining failed) are skipped and recorded, with
    the reason, in the results folder's skipped.json.

    `figures_only` trains nothing: every fine-tuning result the profile plans must be there
    and reusable (made by an earlier batch, or by `rapid-utils finetune --profile`, e.g. under
    torchrun), else `MissingResultsError` names the missing ones; then only the figures
    notebook (05) runs.
    """
    if force and figures_only:
        raise ValueError("force retrains every result and figures_only trains none: choose one")
    settings = load_profile(profile, extra_files)
    corpus = resolve_corpus(profile, settings)
    data = paths.data_location(settings.store) if settings.store else corpus
    try:
        indexed = study.index_corpus(data)
        log.info("%s: %d usable sites", data, indexed.n_sites)
    except CorpusError as error:
        raise CorpusCheckError(f"the corpus of profile {profile!r} cannot be used, so no "
                               f"notebook was run: {error}") from error
    jobs = plan_jobs(profile, settings, corpus)
    reuse = _ReuseCheck(data, indexed)
    if figures_only:
        jobs = _figures_jobs(profile, extra_files, jobs, reuse)
    results_dir = paths.results_dir(paths.runs_dir(profile))
    skipped: dict[str, str] = {}
    if not figures_only and any(results.SCENARIO_BY_KEY[j.scenario].init == "imagenet"
                                for j in jobs if j.scenario):
        reason = _imagenet_unavailable(settings)
        if reason:
            skipped |= {j.scenario: reason for j in jobs
                        if j.scenario and results.SCENARIO_BY_KEY[j.scenario].init == "imagenet"}
    results.write_skipped(results_dir, skipped)

    outcomes: list[NotebookRun] = []
    times_file = paths.runs_dir(profile) / JOB_TIMES_FILE
    reference = speed.reference_step_seconds()
    log.info("reference step of this machine: %.3f s (a quiet 2-core AMD EPYC: 0.18 s)",
             reference)
    start = time.perf_counter()
    for number, job in enumerate(jobs, start=1):
        label = job.notebook + (f" [{job.scenario}, seed {job.parameters['seed']}]"
                                if job.scenario else "")
        # figures only: `_figures_jobs` found every result reusable
        rerun = (reuse.why_rerun(job) if job.results_file and not (force or figures_only)
                 and job.scenario not in skipped else None)
        if job.scenario in skipped:
            outcome = NotebookRun(label, job.output, 0.0, skipped[job.scenario], "skipped")
        elif job.results_file and not force and rerun is None:
            outcome = NotebookRun(label, job.output, 0.0, None, "reused")
        else:
            if rerun and rerun.announce:
                log.info("[%d/%d] %s: rerunning, %s", number, len(jobs), label, rerun.reason)
            # a stale result is replaced (the notebook refuses to overwrite it otherwise)
            replace = force or bool(rerun and rerun.replace)
            parameters = job.parameters | ({"force": True} if replace and job.scenario else {})
            with follow_progress(lambda line, label=label: log.info("    %s: %s", label, line)):
                outcome = run_notebook(job.notebook, job.output, parameters)
            outcome.name = label
            if job.notebook == "03_byol_pretraining" and outcome.error:
                reason = f"BYOL pretraining failed: see {job.output}"
                skipped |= {j.scenario: reason for j in jobs
                            if j.scenario and results.SCENARIO_BY_KEY[j.scenario].init == "byol"}
                results.write_skipped(results_dir, skipped)
        outcomes.append(outcome)
        write_job_times(outcomes, times_file, reference)  # after each job: kept if interrupted
        log.info("[%d/%d] %s: %s%s in %.0f s (total %.0f s)", number, len(jobs), label,
                 outcome.status, f" ({gist(outcome.error)})" if outcome.error else "",
                 outcome.seconds, time.perf_counter() - start)
    return outcomes
