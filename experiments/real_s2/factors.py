"""The recipe's factors on real chips, one at a time, chosen on validation data (issue 29).

Not part of the batch. Each factor is a YAML file in `experiments/real_s2/recipe/` that
changes one setting of the real-s2 profile. `run` reproduces the profile with
`recipe/validation.yaml` (notebook 06's validation protocol: subsets inside each repeat's
training part, test parts never read; frozen evaluations only) and then the factor's file, each
in its own home (one at a time: two trainings on two cores slow both):

    python experiments/real_s2/factors.py run today stem spectral-views
    python experiments/real_s2/factors.py table today stem spectral-views

A factor that changes only notebook 06 (fine-tuning) can start from a copy of another factor's
home, so BYOL is not pretrained again (`run --pretrained-in today finetune-200-steps`);
`curves` then writes the fine-tuning runs' validation accuracy after every epoch.

`table` reads every factor's validation records and writes `factors_validation.csv` beside the
profile's figures: per factor, labels per class and evaluation, BYOL's and random-init's
validation accuracy, BYOL minus random-init (paired over repeats), and BYOL minus the first
factor's BYOL (the reference, `today`). Every factor keeps the profile's seed, so the
validation subsets are the same in all of them and every difference is paired.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from rapid_utils import evaluation, paths

PROFILE = "real-s2"
RECIPE = Path(__file__).resolve().parent / "recipe"
VALIDATION = RECIPE / "validation.yaml"
DEFAULT_ROOT = Path("/tmp/real-s2-factors")


def factor_home(root: Path, factor: str) -> Path:
    """The RAPID_HOME a factor's run writes into."""
    return root / factor


def run(factors: list[str], root: Path, pretrained_in: str | None = None) -> None:
    """Reproduce the profile once per factor, in its own home (a finished one resumes); a new
    home starts as a copy of `pretrained_in`'s (its BYOL checkpoint reused), when given."""
    for factor in factors:
        extra = RECIPE / f"{factor}.yaml"
        if not extra.is_file():
            raise SystemExit(f"no factor file {extra}; known: "
                             f"{sorted(p.stem for p in RECIPE.glob('*.yaml'))}")
        home = factor_home(root, factor)
        if pretrained_in and not home.exists():
            source = factor_home(root, pretrained_in)
            if not (source / "runs" / PROFILE / "byol").is_dir():
                raise SystemExit(f"no BYOL run in {source}: run {pretrained_in} first")
            # its label-efficiency results are another factor's: not copied
            shutil.copytree(source, home, ignore=shutil.ignore_patterns("label_efficiency"))
        env = os.environ | {"RAPID_HOME": str(factor_home(root, factor))}
        command = [sys.executable, "-m", "rapid_utils.cli", "reproduce", "--profile", PROFILE,
                   "--extra", str(VALIDATION), "--extra", str(extra)]
        print(f"== {factor}: {' '.join(command)}", flush=True)
        subprocess.run(command, env=env, check=True)


def _validation_records(root: Path, factor: str) -> pd.DataFrame:
    home = factor_home(root, factor)
    path = paths.label_efficiency_dir(home / "runs" / PROFILE) / "validation" / "records.csv"
    if not path.is_file():
        raise SystemExit(f"no validation records for {factor} at {path}: run it first")
    return pd.read_csv(path)


def table(factors: list[str], root: Path) -> pd.DataFrame:
    """One row per factor, evaluation, classifier and labels per class (see the module doc)."""
    reference = factors[0]
    base = _validation_records(root, reference)
    base_byol = base[base["encoder"] == "byol"].assign(encoder="reference")
    rows = []
    for factor in factors:
        records = _validation_records(root, factor)
        mine = records[records["encoder"] == "byol"].assign(encoder="factor")
        both = pd.concat([records, base_byol, mine], ignore_index=True)
        summary = evaluation.summarise(records).set_index(
            ["encoder", "evaluation", "classifier", "labels_per_class"])
        gains = {
            "byol_minus_random": evaluation.paired_differences(both, "byol", "random-init"),
            "byol_minus_imagestats": evaluation.paired_differences(both, "byol", "imagestats"),
            "byol_minus_reference": evaluation.paired_differences(both, "factor", "reference"),
        }
        keys = ["evaluation", "classifier", "labels_per_class"]
        merged = None
        for name, paired in gains.items():
            part = paired[keys + ["difference_mean", "difference_ci_low", "difference_ci_high"]]
            part = part.rename(columns={"difference_mean": name,
                                        "difference_ci_low": f"{name}_low",
                                        "difference_ci_high": f"{name}_high"})
            merged = part if merged is None else merged.merge(part, on=keys, how="outer")
        for encoder in ("byol", "random-init", "imagestats"):
            merged[encoder] = [summary["accuracy_mean"].get((encoder, *key), float("nan"))
                               for key in merged[keys].itertuples(index=False)]
        rows.append(merged.assign(factor=factor))
    return pd.concat(rows, ignore_index=True)[
        ["factor", "evaluation", "classifier", "labels_per_class", "byol", "random-init",
         "imagestats", *(c for c in rows[0].columns if c.startswith("byol_minus"))]]


def curves(factors: list[str], root: Path) -> pd.DataFrame:
    """Validation accuracy after every fine-tuning epoch: one row per factor, encoder, labels
    per class and epoch, the mean over repeats (and their count) with the AdamW steps done."""
    rows = []
    for factor in factors:
        folder = paths.label_efficiency_dir(factor_home(root, factor) / "runs" / PROFILE)
        found = sorted((folder / "validation").glob("*_k*_repeat*.json"))
        if not found:
            raise SystemExit(f"no fine-tuning runs for {factor} in {folder / 'validation'}")
        for path in found:
            encoder, labels, repeat = path.stem.rsplit("_", 2)
            run_file = json.loads(path.read_text())
            steps_per_epoch = -(-max(run_file["parameters"]["n_train"],
                                     run_file["parameters"]["min_samples_per_epoch"])
                                // run_file["parameters"]["batch_size"])
            for epoch, accuracy in enumerate(run_file["per_epoch"]["val_accuracy"], start=1):
                rows.append({"factor": factor, "encoder": encoder,
                             "labels_per_class": labels.removeprefix("k"),
                             "repeat": int(repeat.removeprefix("repeat")), "epoch": epoch,
                             "steps": epoch * steps_per_epoch, "accuracy": accuracy})
    long = pd.DataFrame(rows)
    return (long.groupby(["factor", "encoder", "labels_per_class", "epoch", "steps"])["accuracy"]
            .agg(accuracy_mean="mean", n_repeats="count").reset_index())


def publish(found: pd.DataFrame, name: str) -> None:
    """Write `found` as `name` beside the profile's figures and print it."""
    out = paths.figures_dir(PROFILE) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluation.write_table(found, out)
    print(found.round(3).to_string())
    print(f"-> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"folder of the factors' homes (default {DEFAULT_ROOT})")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "table", "curves"):
        command = commands.add_parser(name)
        command.add_argument("factors", nargs="+", help="factor files in recipe/, without .yaml")
        if name == "run":
            command.add_argument("--pretrained-in", metavar="FACTOR",
                                 help="start a new home as a copy of FACTOR's (its BYOL reused)")
    args = parser.parse_args()
    if args.command == "run":
        run(args.factors, args.root, args.pretrained_in)
    elif args.command == "table":
        publish(table(args.factors, args.root), "factors_validation.csv")
    else:
        publish(curves(args.factors, args.root), "finetune_curves_validation.csv")


if __name__ == "__main__":
    main()
