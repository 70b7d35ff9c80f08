"""Bootstrap tolerances of pooled quantiles: one partition per draw against one sort of all.

`chip_statistics.bootstrap_tolerance(real, pooled_quantiles, ...)` partitions every draw's
pooled pixels; `bootstrap_quantile_tolerance` sorts the real pixels once and searches each
draw's running multiplicities (the same draws and tolerances). Timed on pixel samples shaped
as notebook 07's (a pool of --chips chips x 4 bands x 256 pixels, --n-chips embedded chips),
lognormal reflectance with 1 % nodata; both methods in the same run, ratio to the plain one.
A script, not a test: ``python benchmarks/realism_tolerances.py --help``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rapid_utils import chip_statistics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chips", type=int, default=500, help="real chips in the pool")
    parser.add_argument("--n-chips", type=int, default=200, help="chips per bootstrap draw")
    parser.add_argument("--draws", type=int, default=chip_statistics.N_DRAWS)
    parser.add_argument("--repeats", type=int, default=3, help="timings per method (best kept)")
    return parser.parse_args(argv)


def best_time(repeats: int, run) -> tuple[float, np.ndarray]:
    """The fastest of `repeats` calls of `run`, and its result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rng = np.random.default_rng(0)
    shape = (args.chips, 4, chip_statistics.PIXELS_PER_CHIP)
    real = rng.lognormal(-2.5, 0.9, shape).astype(np.float32)
    real[rng.random(shape) < 0.01] = np.nan
    plain_s, plain = best_time(args.repeats, lambda: chip_statistics.bootstrap_tolerance(
        real, chip_statistics.pooled_quantiles, args.n_chips, n_draws=args.draws))
    fast_s, fast = best_time(args.repeats, lambda: chip_statistics.bootstrap_quantile_tolerance(
        real, args.n_chips, n_draws=args.draws))
    difference = np.max(np.abs(fast - plain) / np.abs(plain))
    print(f"bootstrap tolerance of pooled quantiles: {args.chips} chips x 4 bands x "
          f"{shape[2]} px, {args.draws} draws of {args.n_chips} chips (best of {args.repeats})")
    print(f"{'method':<40}{'s':>8}{'ratio':>8}")
    print(f"{'partition per draw (bootstrap_tolerance)':<40}{plain_s:>8.3f}{1.0:>8.2f}")
    print(f"{'one sort (bootstrap_quantile_tolerance)':<40}{fast_s:>8.3f}{fast_s / plain_s:>8.2f}")
    print(f"largest relative difference of the tolerances: {difference:.1e}")


if __name__ == "__main__":
    main()
