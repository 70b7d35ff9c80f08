"""The headline comparison over pretraining seeds: BYOL against its own random-init draw, on the
same split and label subsets, for several `byol_seed`s (issue 29).

One BYOL run and one random network leave the pretraining variance out of the real-s2 table's
intervals. `run` reproduces the real-s2 profile, test protocol, once per pretraining seed in its
own home (`byol_seed: N`; the profile's `seed`, so the split and the subsets, unchanged; frozen
evaluations only unless `--finetune`); `table` reads each seed's paired differences and writes
`seeds_test.csv` beside the profile's figures: per seed and comparison, the mean difference over
repeats with its chip-bootstrap interval, and over seeds, their mean with a Student-t interval
(the spread between pretraining runs and random draws) and how many seeds' bootstrap interval
lies above 0:

    python experiments/real_s2/seeds.py run 1 2
    python experiments/real_s2/seeds.py table 0 1 2 --home 0=$RAPID_HOME

The recipe is chosen before, on validation data (`factors.py`): this only reports.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from factors import PROFILE, publish  # this folder is on the path when run as a script

from rapid_utils import evaluation, paths

DEFAULT_ROOT = Path("/tmp/real-s2-seeds")
COMPARISONS = [("byol", "random-init"), ("imagestats+byol", "imagestats"),
               ("imagestats+byol", "imagestats+random-init"), ("byol", "imagestats")]


def seed_home(root: Path, seed: int) -> Path:
    """The RAPID_HOME pretraining seed `seed`'s run writes into."""
    return root / f"seed{seed}"


def run(seeds: list[int], root: Path, finetune: bool, extra: list[Path]) -> None:
    """Reproduce the profile once per pretraining seed, each in its own home (resumes), with
    the `extra` YAML files after the seed's own."""
    for seed in seeds:
        home = seed_home(root, seed)
        home.mkdir(parents=True, exist_ok=True)
        seed_file = home / "byol_seed.yaml"
        seed_file.write_text(f"byol_seed: {seed}\n"
                         + ("" if finetune else "suite_finetune_repeats: 0\n"))
        command = [sys.executable, "-m", "rapid_utils.cli", "reproduce", "--profile", PROFILE,
                   *(f"--extra={path}" for path in (seed_file, *extra))]
        print(f"== byol_seed {seed}: {' '.join(command)}", flush=True)
        subprocess.run(command, env=os.environ | {"RAPID_HOME": str(home)}, check=True)


def _paired(home: Path) -> pd.DataFrame:
    path = paths.label_efficiency_dir(home / "runs" / PROFILE) / "paired.csv"
    if not path.is_file():
        raise SystemExit(f"no paired table at {path}: run that seed first")
    return pd.read_csv(path, dtype={"labels_per_class": str})


def table(homes: dict[int, Path]) -> pd.DataFrame:
    """Per comparison, evaluation and labels per class: each seed's mean difference with its
    chip-bootstrap interval, then the mean over seeds with a Student-t interval over them."""
    keys = ["encoder", "baseline", "evaluation", "classifier", "labels_per_class"]
    per_seed = []
    for seed, home in homes.items():
        paired = _paired(home)
        chosen = paired.set_index(["encoder", "baseline"]).loc[COMPARISONS].reset_index()
        per_seed.append(chosen.assign(byol_seed=seed))
    found = pd.concat(per_seed, ignore_index=True)
    frozen = found[found["evaluation"] != "finetune"]
    rows = []
    for key, group in frozen.groupby(keys, sort=False):
        mean, _, low, high = evaluation.mean_interval(group["difference_mean"].to_numpy())
        row = dict(zip(keys, key, strict=True)) | {
            "seeds": len(group), "mean_over_seeds": mean, "seeds_ci_low": low,
            "seeds_ci_high": high,
            "seeds_bootstrap_above_0": int((group["bootstrap_ci_low"] > 0).sum())}
        for seed_row in group.itertuples():
            row |= {f"seed{seed_row.byol_seed}": seed_row.difference_mean,
                    f"seed{seed_row.byol_seed}_low": seed_row.bootstrap_ci_low,
                    f"seed{seed_row.byol_seed}_high": seed_row.bootstrap_ci_high}
        rows.append(row)
    return pd.DataFrame(rows)


def _home_overrides(given: list[str]) -> dict[int, Path]:
    overrides = {}
    for item in given:
        seed, _, home = item.partition("=")
        if not seed.isdigit() or not home:
            raise SystemExit(f"--home takes SEED=PATH, got {item!r}")
        overrides[int(seed)] = Path(home)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"folder of the seeds' homes (default {DEFAULT_ROOT})")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "table"):
        command = commands.add_parser(name)
        command.add_argument("seeds", nargs="+", type=int, help="pretraining seeds (byol_seed)")
    commands.choices["run"].add_argument("--finetune", action="store_true",
                                         help="also the profile's fine-tuning repeats")
    commands.choices["run"].add_argument("--extra", action="append", default=[], type=Path,
                                         help="a further YAML file (e.g. threads: 1)")
    commands.choices["table"].add_argument(
        "--home", action="append", default=[], metavar="SEED=PATH",
        help="a seed's RAPID_HOME elsewhere (e.g. the profile's own run for seed 0)")
    args = parser.parse_args()
    if args.command == "run":
        run(args.seeds, args.root, args.finetune, args.extra)
        return
    homes = {seed: seed_home(args.root, seed) for seed in args.seeds}
    publish(table(homes | _home_overrides(args.home)), "seeds_test.csv")


if __name__ == "__main__":
    main()
