"""What a BYOL step costs under each recipe of the real-s2 study: stem, view size and width.

One BYOL optimisation step (`rapid_utils.byol.BYOL` forward with both views, backward, LARS,
target update, as `rapid_utils.train.pretrain` does; augmentation not timed) of the profile's
ResNet-18 (or the arch a recipe names, e.g. the narrower "resnet18-w32") with heads 1024/128
on random 4-band batches, for each recipe asked. Each
cell is the median of the timed steps, with samples per second and the ratio to the first
recipe, all measured in this one run (so the ratios hold on another CPU; the absolute times
scale with `benchmarks/threads.py`'s reference step). Prints a table and writes JSON
(atomically). A script, not a test: ``python benchmarks/recipe_cost.py --help``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from rapid_utils import provenance, speed
from rapid_utils.io import write_json_atomic

RECIPES = ("imagenet:32", "small-stride2:32", "small-stride2:16", "small:32", "imagenet:64",
           "imagenet:32:resnet18-w32", "small-stride2:32:resnet18-w32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES),
                        help="stem:view_size[:arch] (arch: --arch when left out); the first is "
                        "the baseline of the ratios")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=4, help="timed steps per recipe")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe_cost.json"))
    return parser.parse_args(argv)


def step_seconds(stem: str, size: int, arch: str, batch: int, iters: int, warmup: int
                 ) -> float:
    """Median seconds of one BYOL step at this stem and view size."""
    return speed.median_step_seconds(speed.byol_step(arch, batch, size, stem=stem), iters, warmup)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for recipe in args.recipes:
        stem, size, arch = (recipe.split(":") + [args.arch])[:3]
        seconds = step_seconds(stem, int(size), arch, args.batch_size, args.iters, args.warmup)
        rows.append({"arch": arch, "stem": stem, "view_size": int(size), "step_s": seconds,
                     "samples_per_s": args.batch_size / seconds})
    base = rows[0]["step_s"]
    print(f"batch {args.batch_size}, median of {args.iters} steps, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'arch':<14}{'stem':<15}{'view':>6}{'step s':>9}{'samples/s':>11}{'ratio':>7}")
    for row in rows:
        row["ratio"] = row["step_s"] / base
        print(f"{row['arch']:<14}{row['stem']:<15}{row['view_size']:>6}{row['step_s']:>9.3f}"
              f"{row['samples_per_s']:>11.1f}{row['ratio']:>7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"batch_size": args.batch_size,
                                 "iters": args.iters, "rows": rows,
                                 "versions": provenance.versions()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
