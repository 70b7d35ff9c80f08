"""The `rapid-utils` command: generate the embedded corpus, run the notebook batch."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from rapid_utils import batch
from rapid_utils.corpus import layout
from rapid_utils.corpus.synthetic import generate_corpus


def _synth(args: argparse.Namespace) -> int:
    dates = args.dates if args.dates in ("monthly", "all") else args.dates.split(",")
    generate_corpus(args.out, n_sites=args.n_sites, seed=args.seed, size=args.size,
                    dates=dates, workers=args.workers)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    runs = batch.reproduce(args.profile, tuple(args.extra))
    failed = [run for run in runs if run.error]
    logging.info("%d notebooks in %.0f s, %d failed", len(runs), time.perf_counter() - start,
                 len(failed))
    for run in failed:
        logging.error("failed: %s (%s); the executed notebook is kept at %s",
                      run.name, run.error, run.output)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `rapid-utils`."""
    parser = argparse.ArgumentParser(prog="rapid-utils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the embedded synthetic corpus")
    synth.add_argument("--out", required=True, help="output folder (new or empty)")
    synth.add_argument("--n-sites", type=int, default=1000)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=layout.SITE_SIZE_PX,
                       help="patch size in 3 m pixels (200 = the real 600 m site)")
    synth.add_argument("--dates", default="monthly",
                       help="'monthly' (24), 'all' (146) or comma-separated YYYY-MM-DD")
    synth.add_argument("--workers", type=int, default=2, help="worker processes")
    synth.set_defaults(func=_synth)

    reproduce = commands.add_parser("reproduce", help="run the notebook batch of a profile")
    reproduce.add_argument("--profile", default="quick", help="params/{profile}.yaml")
    reproduce.add_argument("--extra", action="append", default=[],
                           help="another YAML file overriding profile values (repeatable)")
    reproduce.set_defaults(func=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rapid-utils` console script."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)  # our one line per notebook suffices
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (batch.ProfileError, FileExistsError, ValueError) as error:
        logging.error("error: %s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
