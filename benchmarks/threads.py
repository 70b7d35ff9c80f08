"""torch threads against a busy machine: one BYOL step with 1, 2 (torch's default on this
machine: one per core) and `set_threads(0)` (the free cores) threads, alone and beside one
competing busy process.

The step is the quick profile's: resnet18 encoder, batch 32, 32 px views, hidden 1024,
projection 128, LARS, EMA target update. Competitors, each a separate process started before the
timed steps and killed after them:

- ``none``: nothing else runs (beyond what the machine already runs: say what, when you quote it);
- ``spin``: one pure-Python busy loop (one core fully taken, as by a data-preparation script);
- ``torch``: another process doing the same BYOL steps with torch's default threads (a second
  training job).

Every cell is the median of the timed steps and its ratio to ``default threads, none`` of the
same run. Prints a table and writes JSON (atomically). A script, not a test:
``python benchmarks/threads.py --help``. On a 2-core machine it takes about two minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rapid_utils import distributed, provenance, speed
from rapid_utils.io import write_json_atomic

COMPETITORS = ("none", "spin", "torch")
SPIN = "while True: pass"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=8, help="timed steps per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, per cell")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threads.json"))
    parser.add_argument("--competitor-loop", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def competitor(kind: str) -> subprocess.Popen | None:
    """Start the competing process of `kind` (None for "none")."""
    if kind == "none":
        return None
    command = ([sys.executable, "-c", SPIN] if kind == "spin"
               else [sys.executable, __file__, "--competitor-loop"])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def time_steps(step: Callable[[], None], threads: int, iters: int, warmup: int) -> float:
    """Median seconds of `iters` steps with `threads` torch threads, after `warmup` steps."""
    torch.set_num_threads(threads)
    return speed.median_step_seconds(step, iters, warmup)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    step = speed.reference_step()
    if args.competitor_loop:  # the "torch" competitor: BYOL steps until killed
        while True:
            step()
    default = os.cpu_count() or 1
    rows = []
    for kind in COMPETITORS:
        process = competitor(kind)
        try:
            time.sleep(1.0 if kind == "torch" else 0.3)  # let it start (torch imports)
            chosen = distributed.set_threads(0)
            for label, threads in (("1", 1), (f"{default} (torch default)", default),
                                   (f"{chosen} (set_threads(0))", chosen)):
                seconds = time_steps(step, threads, args.iters, args.warmup)
                rows.append({"competitor": kind, "threads": label, "n_threads": threads,
                             "seconds_per_step": seconds})
        finally:
            if process is not None:
                process.kill()
                process.wait()
    baseline = next(r["seconds_per_step"] for r in rows
                    if r["competitor"] == "none" and r["n_threads"] == default)
    print(f"BYOL reference step ({speed.REFERENCE_STEP}), {provenance.machine()}; "
          f"ratio to {default} threads alone (measured in this run)")
    print(f"{'competitor':<11}{'threads':<24}{'s/step':>8}{'ratio':>8}")
    for row in rows:
        row["ratio_to_baseline"] = row["seconds_per_step"] / baseline
        print(f"{row['competitor']:<11}{row['threads']:<24}{row['seconds_per_step']:>8.3f}"
              f"{row['ratio_to_baseline']:>8.2f}")
    write_json_atomic(args.out, {"rows": rows, "cores": default, "iters": args.iters,
                                 "machine": provenance.machine()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
