"""Fine-tuning results files in, tables out: the poster's scenarios, summaries and claims.

`train.finetune` writes one JSON file per run into `paths.results_dir(runs)`, in the form
`RunResult` defines (`write_run`, `read_run`; files from before `SCHEMA_VERSION` are read too).
This module reads them back (complete files only), names the poster scenario of each run,
aggregates over seeds and computes the poster's two claims. Figures are drawn from these
tables in `plots/`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from rapid_utils import evaluation, labels
from rapid_utils.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scenario:
    """One poster scenario: an initialisation fine-tuned on a share of the training labels."""

    key: str  # stable identifier used in tables, file names and skipped.json
    label: str  # human-readable name for figures
    init: str  # "random", "imagenet" or "byol" (any "byol:<checkpoint>" init)
    label_fraction: float


# The poster's five scenarios, in the poster's order.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("scratch-100%", "Scratch 100%", "random", 1.0),
    Scenario("byol-100%", "BYOL 100%", "byol", 1.0),
    Scenario("byol-10%", "BYOL 10%", "byol", 0.1),
    Scenario("byol-1%", "BYOL 1%", "byol", 0.01),
    Scenario("imagenet-100%", "ImageNet 100%", "imagenet", 1.0),
)
# Not on the poster: the fair baseline for BYOL 1%, trained on the same 1% of labels (against
# scratch-100% alone, BYOL-1% could not show what pretraining adds at that label share).
EXTRA_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("scratch-1%", "Scratch 1%", "random", 0.01),
)
ALL_SCENARIOS: tuple[Scenario, ...] = SCENARIOS + EXTRA_SCENARIOS
SCENARIO_BY_KEY: dict[str, Scenario] = {s.key: s for s in ALL_SCENARIOS}

SKIPPED_FILE = "skipped.json"
SKIPPED_FORMAT = """\
`skipped.json`, written by the batch runner into the results folder (beside the results
files) when it could not run a scenario at all, e.g. ImageNet weights unavailable offline.
One JSON object mapping a scenario key (see `SCENARIOS`/`EXTRA_SCENARIOS`) to a one-line
reason, for example:

    {"imagenet-100%": "ImageNet weights unavailable offline (no torchvision cache)"}

A missing file means nothing was skipped. Figures and tables show the reason where the
scenario would be.
"""

# The poster's stated improvements, read as accuracy points ("more than 12%", "5% improved").
POSTER_CLAIMS: tuple[dict, ...] = (
    {"claim": "byol-100% - scratch-100%", "minuend": "byol-100%", "subtrahend": "scratch-100%",
     "poster": "> 12", "poster_points": 12.0},
    {"claim": "byol-1% - scratch-100%", "minuend": "byol-1%", "subtrahend": "scratch-100%",
     "poster": "~ 5", "poster_points": 5.0},
)
EXTRA_CLAIM = {"claim": "byol-1% - scratch-1%", "minuend": "byol-1%", "subtrahend": "scratch-1%",
               "poster": "not on poster", "poster_points": math.nan}


SCHEMA_VERSION = 1
"""Version of the results-file form `RunResult` writes; raised when a field changes meaning or
goes, so a reader knows which form it holds."""


class ResultsFileError(ValueError):
    """A results file that cannot be read as a `RunResult`; the message names it and the fix."""


class IncompleteRunError(ResultsFileError):
    """A results file of a run that did not finish (`"complete"` false or absent)."""


@dataclass(frozen=True)
class RunResult:
    """One fine-tuning run as its results file holds it (`train.finetune` writes it).

    The file is this dataclass's fields as JSON, plus ``"complete": true`` (only finished runs
    are written) and `schema_version`. Accuracies are fractions.
    """

    parameters: dict  # FinetuneConfig's fields, n_train, n_labelled, n_val, n_test, world_size
    seed: int
    device: str  # where it trained, e.g. "cuda:0"
    per_epoch: dict  # train_loss, val_accuracy, test_accuracy (None: not evaluated), lr
    final: dict  # "test" and "val": metrics.classification_metrics of the last epoch
    per_date_accuracy: dict  # "test" and "val": {ISO date: accuracy of single-date predictions}
    provenance: dict | None  # split and band statistics fingerprints, BYOL checkpoint sha256
    normalisation: dict | None  # models.Normalisation.describe() of the input
    model: dict | None  # the fine-tuned weights' folder and sha256, when saved
    unreadable_samples: dict  # samples replaced by others, with why
    classes: list  # class names, in class-index order
    versions: dict
    machine: str | None  # CPU model and count, torch's CPU kernels (provenance.machine)
    git_commit: str | None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        """The results file's content."""
        content = asdict(self)
        return {"schema_version": content.pop("schema_version"), **content, "complete": True}

    @classmethod
    def from_json(cls, data: Mapping, source: str = "results") -> RunResult:
        """Read a results file's content (`source` names it in errors), either form.

        Raises `ResultsFileError` for an incomplete run, missing fields or a newer schema.
        """
        if not isinstance(data, Mapping) or not data.get("complete"):
            raise IncompleteRunError(f"{source} holds no complete run (it stopped before the end "
                                   "or is not a results file): run the fine-tuning again")
        version = data.get("schema_version")
        if version is None:
            return _from_unversioned(data, source)
        if version != SCHEMA_VERSION:
            raise ResultsFileError(
                f"{source} has results schema version {version}, this rapid_utils reads "
                f"{SCHEMA_VERSION}: read it with the rapid_utils that wrote it, or run again")
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ResultsFileError(f"{source} lacks {', '.join(missing)} (schema version "
                                   f"{version}): it was not written by train.finetune")
        return cls(**{name: data[name] for name in names})


# Parameters an unversioned results file may lack, with the value those runs used where it
# differs from the field's default (`changed_fields` reads a missing field as its default).
_UNVERSIONED_PARAMETERS = {"eval_dates": "first", "test_every_epoch": True}


def _from_unversioned(data: Mapping, source: str) -> RunResult:
    """A results file written before `schema_version` (the only earlier form).

    Read rather than refused: each such file is a finished, possibly GPU-hours long run, and
    every field it may lack has one known meaning. Parameters fields added later hold what those
    runs did (`_UNVERSIONED_PARAMETERS`: the first date, the test split every epoch); no
    per-date accuracy, no provenance (so the batch runs it again, `train.stale_reasons`), the
    poster's 7 classes, nothing unreadable and no saved model.
    """
    missing = [key for key in ("parameters", "per_epoch", "final") if key not in data]
    if missing:
        raise ResultsFileError(f"{source} lacks {', '.join(missing)}: it was not written by "
                               "train.finetune")
    parameters = _UNVERSIONED_PARAMETERS | dict(data["parameters"])
    return RunResult(
        parameters=parameters,
        seed=int(data.get("seed", parameters.get("seed", 0))),
        device=str(data.get("device", "unknown")),
        per_epoch=dict(data["per_epoch"]),
        final=dict(data["final"]),
        per_date_accuracy=dict(data.get("per_date_accuracy") or {}),
        provenance=data.get("provenance"),
        normalisation=data.get("normalisation"),
        model=data.get("model"),
        unreadable_samples=dict(data.get("unreadable_samples") or {}),
        classes=list(data.get("classes") or labels.CLASSES),
        versions=dict(data.get("versions") or {}),
        machine=data.get("machine"),
        git_commit=data.get("git_commit"),
    )


def write_run(path: str | Path, run: RunResult) -> None:
    """Write `run`'s results file atomically."""
    write_json_atomic(path, run.to_json())


def read_run(path: str | Path) -> RunResult:
    """The run in results file `path`; `ResultsFileError` names the file and what to do."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsFileError(f"cannot read results file {path} ({error}): delete it and run "
                               "the fine-tuning again") from error
    return RunResult.from_json(data, str(path))


def as_run(results: RunResult | Mapping) -> RunResult:
    """`results` as a RunResult; a mapping is read as a results file's content (what
    `train.finetune` returns)."""
    return results if isinstance(results, RunResult) else RunResult.from_json(results)


def scenario_of(run: RunResult) -> str | None:
    """The scenario key of a run, or None for runs outside the scenarios (probes...)."""
    parameters = run.parameters
    if parameters.get("linear_probe"):
        return None
    init = str(parameters.get("init", ""))
    kind = "byol" if init == "byol" or init.startswith("byol:") else init
    fraction = parameters.get("label_fraction")
    if fraction is None:
        return None
    for scenario in ALL_SCENARIOS:
        if scenario.init == kind and math.isclose(float(fraction), scenario.label_fraction):
            return scenario.key
    return None


def load_results(results_dir: str | Path) -> list[RunResult]:
    """Every complete results file (`*.json`) of a folder, in name order.

    Incomplete, unreadable or malformed files are skipped with a warning naming them, so a
    crashed run never stops the figures. `skipped.json` is not a results file.
    """
    directory = Path(results_dir)
    found = []
    for path in sorted(directory.glob("*.json")):
        if path.name == SKIPPED_FILE:
            continue
        try:
            found.append(read_run(path))
        except ResultsFileError as error:
            log.warning("skipping results file: %s", error)
    if not found:
        log.warning("no complete results files in %s", directory)
    return found


def _ordered(keys: Sequence[str]) -> list[str]:
    return [s.key for s in ALL_SCENARIOS if s.key in set(keys)]


def per_epoch_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """Tidy table, one row per scenario run and epoch (1-based); accuracies as fractions.

    `test_accuracy` is NaN at the epochs whose test sites were not classified (by default
    only the last epoch's are: `FinetuneConfig.test_every_epoch`).
    """
    rows = []
    for run in results:
        scenario = scenario_of(run)
        if scenario is None:
            continue
        curves = run.per_epoch
        for epoch, (test, val) in enumerate(
                zip(curves["test_accuracy"], curves["val_accuracy"], strict=True), start=1):
            rows.append({
                "scenario": scenario,
                "seed": run.seed,
                "epoch": epoch,
                "test_accuracy": math.nan if test is None else float(test),
                "val_accuracy": math.nan if val is None else float(val),
                "train_loss": float(curves["train_loss"][epoch - 1]),
            })
    columns = ["scenario", "seed", "epoch", "test_accuracy", "val_accuracy", "train_loss"]
    table = pd.DataFrame(rows, columns=columns)
    order = {key: i for i, key in enumerate(s.key for s in ALL_SCENARIOS)}
    return table.sort_values(["scenario", "seed", "epoch"], key=lambda c: (
        c.map(order) if c.name == "scenario" else c)).reset_index(drop=True)


def classes_of(results: Sequence[RunResult]) -> tuple[str, ...]:
    """The class names of runs (chips corpora record their own), else the poster's 7."""
    return tuple(results[0].classes) if results else labels.CLASSES


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def summary_table(results: Sequence[RunResult], split: str = "test") -> pd.DataFrame:
    """One row per scenario present (index: scenario key), final metrics over seeds.

    Columns: label, n_seeds, seeds, test_accuracy_mean/std, macro_f1_mean/std (std with
    ddof=1, NaN for a single seed), precision_<class> and recall_<class> means (classes as
    in `classes_of`), and
    test_accuracy_by_seed ({seed: accuracy}, for paired differences). Values are fractions.
    A seed present twice (e.g. a rerun at another path) counts once, the last file read.
    """
    by_scenario: dict[str, dict[int, Mapping]] = {}
    for run in results:
        scenario = scenario_of(run)
        if scenario is not None:
            by_scenario.setdefault(scenario, {})[run.seed] = run.final[split]
    class_names = classes_of(results)
    rows = []
    for key in _ordered(list(by_scenario)):
        finals = by_scenario[key]
        seeds = sorted(finals)
        accuracy = [float(finals[s]["accuracy"]) for s in seeds]
        macro_f1 = [float(finals[s]["macro_f1"]) for s in seeds]
        row = {
            "scenario": key,
            "label": SCENARIO_BY_KEY[key].label,
            "n_seeds": len(seeds),
            "seeds": " ".join(str(s) for s in seeds),
            f"{split}_accuracy_mean": float(np.mean(accuracy)),
            f"{split}_accuracy_std": _std(accuracy),
            "macro_f1_mean": float(np.mean(macro_f1)),
            "macro_f1_std": _std(macro_f1),
        }
        for metric in ("precision", "recall"):
            for name in class_names:
                row[f"{metric}_{name}"] = float(np.mean(
                    [finals[s][metric].get(name, 0.0) for s in seeds]))
        row[f"{split}_accuracy_by_seed"] = dict(zip(seeds, accuracy, strict=True))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.set_index("scenario") if rows else table


def _difference(summary: pd.DataFrame, minuend: str, subtrahend: str) -> dict:
    """Mean difference in accuracy points and its spread (`evaluation.difference`: paired when
    the seeds agree)."""
    a = summary.loc[minuend, "test_accuracy_by_seed"]
    b = summary.loc[subtrahend, "test_accuracy_by_seed"]
    found = evaluation.difference(a, b)
    method = (f"std of per-seed differences ({len(a)} paired seeds)" if found.paired else
              f"combined std sqrt(sa²+sb²) ({len(a)} vs {len(b)} seeds, unpaired)")
    return {"difference_mean": 100 * found.mean, "spread": 100 * found.std,
            "spread_method": method}


def poster_claims(summary: pd.DataFrame, skipped: Mapping[str, str] | None = None
                  ) -> pd.DataFrame:
    """The poster's claims recomputed in accuracy points (x100), beside the poster's values.

    Rows: BYOL-100% minus scratch-100%, BYOL-1% minus scratch-100%, and BYOL-1% minus
    scratch-1% when that scenario ran. A claim whose scenario is missing has NaN values and a
    note (with the reason from `skipped` where given).
    """
    skipped = dict(skipped or {})
    present = set(summary.index) if len(summary) else set()
    claims = list(POSTER_CLAIMS)
    if "scratch-1%" in present:
        claims.append(EXTRA_CLAIM)
    rows = []
    for claim in claims:
        row = dict(claim)
        missing = [k for k in (claim["minuend"], claim["subtrahend"]) if k not in present]
        if missing:
            row |= {"difference_mean": math.nan, "spread": math.nan, "spread_method": ""}
            row["note"] = "; ".join(
                f"{k} missing" + (f" (skipped: {skipped[k]})" if k in skipped else "")
                for k in missing)
        else:
            row |= _difference(summary, claim["minuend"], claim["subtrahend"])
            row["note"] = ""
        rows.append(row)
    columns = ["claim", "minuend", "subtrahend", "difference_mean", "spread", "spread_method",
               "poster", "poster_points", "note"]
    return pd.DataFrame(rows, columns=columns).set_index("claim")


def claims_text(claims: pd.DataFrame) -> str:
    """The claims as plain sentences (markdown list), for a notebook's reading."""
    lines = []
    for claim, row in claims.iterrows():
        if row["note"]:
            lines.append(f"- **{claim}**: not computed, {row['note']}.")
            continue
        spread = "n/a" if math.isnan(row["spread"]) else f"{row['spread']:.1f}"
        poster = row["poster"] if row["poster"] == "not on poster" else f"poster {row['poster']}"
        sign = "above" if row["difference_mean"] > 0 else "not above"
        lines.append(
            f"- **{claim}**: {row['difference_mean']:+.1f} ± {spread} accuracy points "
            f"({row['spread_method']}); {row['minuend']} is {sign} {row['subtrahend']}; "
            f"{poster}.")
    return "\n".join(lines)


def _markdown(summary: pd.DataFrame, claims: pd.DataFrame | None) -> str:
    def pm(mean: float, std: float, scale: float, digits: int) -> str:
        tail = "" if math.isnan(std) else f" ± {scale * std:.{digits}f}"
        return f"{scale * mean:.{digits}f}{tail}"

    lines = ["| scenario | seeds | test accuracy (%) | macro-F1 |", "|---|---|---|---|"]
    for key, row in summary.iterrows():
        lines.append(
            f"| {row['label']} (`{key}`) | {row['n_seeds']} | "
            f"{pm(row['test_accuracy_mean'], row['test_accuracy_std'], 100, 1)} | "
            f"{pm(row['macro_f1_mean'], row['macro_f1_std'], 1, 3)} |")
    lines.append("")
    lines.append("Mean ± standard deviation over seeds (ddof 1; no ± for a single seed).")
    if claims is not None and len(claims):
        lines += ["", "| claim | difference (points) | spread | poster | note |",
                  "|---|---|---|---|---|"]
        for claim, row in claims.iterrows():
            difference = row["difference_mean"]
            value = "n/a" if math.isnan(difference) else f"{difference:+.1f}"
            spread = "n/a" if math.isnan(row["spread"]) else f"{row['spread']:.1f}"
            lines.append(f"| {claim} | {value} | {spread} | {row['poster']} | {row['note']} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: pd.DataFrame, directory: str | Path,
                  claims: pd.DataFrame | None = None) -> tuple[Path, Path]:
    """Write `results.csv` (fractions; per-seed accuracies as JSON) and `results.md` atomically.

    `results.md` holds the summary as mean ± std (accuracy in %) and, if given, the claims.
    """
    directory = Path(directory)
    table = summary.copy()
    for column in [c for c in table.columns if c.endswith("_by_seed")]:
        table[column] = [json.dumps({str(k): v for k, v in d.items()}) for d in table[column]]
    csv_path, md_path = directory / "results.csv", directory / "results.md"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp)
    with atomic_path(md_path) as tmp:
        tmp.write_text(_markdown(summary, claims))
    return csv_path, md_path


class NoResultsError(RuntimeError):
    """No complete fine-tuning result to draw figures from."""


def require_results(found: Sequence[RunResult], directory: str | Path,
                    skipped: Mapping[str, str]) -> None:
    """Stop with a message in words when `found` (from `load_results`) is empty.

    Figures of nothing would fail later with an obscure pandas error; this says what is
    missing, what the batch skipped and why, and where to look.
    """
    if found:
        return
    reasons = "".join(f"\n- {key}: {reason}" for key, reason in skipped.items())
    raise NoResultsError(
        f"No complete fine-tuning results in {directory}, so there is nothing to draw. Every "
        "fine-tuning job failed or was skipped: see the batch's last lines and the executed "
        "04_finetuning notebooks beside this one"
        + (f". Skipped by the batch:{reasons}" if reasons else "")
    )


def skipped_scenarios(directory: str | Path) -> dict[str, str]:
    """Scenario key -> reason from the folder's `skipped.json` (format: `SKIPPED_FORMAT`).

    No file means nothing skipped; an unreadable file is warned about and read as empty.
    """
    path = Path(directory) / SKIPPED_FILE
    if not path.is_file():
        return {}
    try:
        reasons = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("ignoring unreadable %s (%s)", path, error)
        return {}
    if not isinstance(reasons, dict):
        log.warning("ignoring %s: expected a JSON object of scenario -> reason", path)
        return {}
    return {str(k): str(v) for k, v in reasons.items()}


def write_skipped(directory: str | Path, reasons: Mapping[str, str]) -> Path:
    """Write `skipped.json` (format: `SKIPPED_FORMAT`) atomically; for the batch runner."""
    unknown = set(reasons) - set(SCENARIO_BY_KEY)
    if unknown:
        raise ValueError(f"unknown scenario keys {sorted(unknown)}; known: {list(SCENARIO_BY_KEY)}")
    path = Path(directory) / SKIPPED_FILE
    write_json_atomic(path, dict(reasons))
    return path
