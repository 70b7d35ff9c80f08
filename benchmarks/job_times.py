"""The per-job wall times of a profile's last batch (`make reproduce`), as the batch recorded
them in runs/<profile>/job_times.csv, with the totals per notebook. A script, not a test:
``python benchmarks/job_times.py --profile quick``. It times nothing itself: what else ran on
the machine during that batch is for whoever quotes the numbers to say.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from rapid_utils import notebook_batch, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args(argv)
    path = paths.runs_dir(args.profile) / notebook_batch.JOB_TIMES_FILE
    if not path.is_file():
        print(f"no {path}: run `make reproduce PROFILE={args.profile}` first; the batch "
              "writes it after every job")
        return 0
    times = pd.read_csv(path)
    on = f", on {times['machine'].iloc[-1]}" if "machine" in times else ""  # since 2026-12-03
    if "reference_step_s" in times:  # since 2026-12-05
        on += f", reference step {times['reference_step_s'].iloc[-1]:.3f} s"
    print(f"{args.profile} batch, written {times['written'].iloc[-1]}{on} ({path})")
    print(times[["job", "status", "seconds"]].to_string(index=False))
    notebooks = times.assign(notebook=times["job"].str.split(" ").str[0])
    print(notebooks.groupby("notebook", sort=False)["seconds"].agg(["count", "sum"]).to_string())
    print(f"total {times['seconds'].sum():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
