"""The checks behind the README's "Why BYOL does not beat random-init here" (real-s2 profile).

Not part of the batch. Run the profile first (`rapid-utils reproduce --profile real-s2`),
then each variant in its own home (one at a time: two trainings on two cores slow both):

    RAPID_HOME=/tmp/real-s2-l1c rapid-utils reproduce --profile real-s2 \
        --extra experiments/real_s2/l1c-only.yaml
    RAPID_HOME=/tmp/real-s2-nojitter rapid-utils reproduce --profile real-s2 \
        --extra experiments/real_s2/no-jitter.yaml
    RAPID_HOME=/tmp/real-s2-pooled rapid-utils reproduce --profile real-s2 \
        --extra experiments/real_s2/pooled-normalisation.yaml
    python experiments/real_s2/factors.py view-size --size 32 --out /tmp/real-s2-32px
    python experiments/real_s2/factors.py compare \
        /tmp/real-s2-l1c/runs/real-s2/label_efficiency/records.csv

`view-size` scores the profile's BYOL checkpoint frozen at another chip size; `compare`
prints a variant's BYOL minus the profile's BYOL, random-init and imagestats, paired on the
same subsets (every variant keeps the profile's seed, so its subsets are the same).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from rapid_utils import evaluation, label_efficiency, paths, study, train
from rapid_utils.corpus import chips

PROFILE = "real-s2"


def view_size(size: int, out: Path) -> None:
    """The profile's frozen evaluations, its BYOL checkpoint read at `size` px chips."""
    runs = paths.runs_dir(PROFILE)
    spec = dataclasses.replace(chips.load_spec(paths.chips_spec_path(PROFILE)), size=size)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    spec.save(out / "chips.yaml")
    # the same normalisation: statistics are computed before resizing
    (out / "runs" / paths.BAND_STATS_FILE).write_text((runs / paths.BAND_STATS_FILE).read_text())
    data = study.load_study(out / "chips.yaml", out / "runs", stats_sites=512)
    checkpoint = paths.byol_run_dir(runs, "augment", 0) / paths.CHECKPOINT_FILE
    config = label_efficiency.SuiteConfig(finetune_repeats=0, test_share=0.4)
    inits = {"byol": f"byol:{checkpoint}", "random-init": "random"}
    _, summary = label_efficiency.run_suite(data, config, "resnet18", out / "runs",
                                            train.FinetuneConfig(), inits, progress=True)
    print(summary.round(3).to_string())


def compare(records_csv: Path) -> None:
    """A variant's BYOL minus the profile's encoders, paired, frozen evaluations."""
    profile = pd.read_csv(paths.label_efficiency_dir(paths.runs_dir(PROFILE)) / "records.csv")
    variant = pd.read_csv(records_csv)
    variant = variant[variant["encoder"] == "byol"].assign(encoder="variant")
    both = pd.concat([profile[profile["evaluation"] != "finetune"], variant])
    paired = pd.concat([evaluation.paired_differences(both, "variant", baseline)
                        for baseline in ("byol", "random-init", "imagestats")])
    print(paired.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    size = commands.add_parser("view-size")
    size.add_argument("--size", type=int, default=32)
    size.add_argument("--out", type=Path, required=True)
    paired = commands.add_parser("compare")
    paired.add_argument("records", type=Path)
    args = parser.parse_args()
    if args.command == "view-size":
        view_size(args.size, args.out)
    else:
        compare(args.records)


if __name__ == "__main__":
    main()
