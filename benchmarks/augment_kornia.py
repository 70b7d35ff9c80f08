"""Our batched BYOL views (`rapid_utils.augment`) against the nearest kornia pipeline.

Kornia's augmentations work on any band count, as torchgeo uses them, so they could replace
`augment.py` if they were as fast and as faithful. The kornia pipeline here is the closest
one: RandomResizedCrop (same scale and ratio), horizontal and vertical flips,
RandomRotation90, RandomBrightness and RandomContrast without clipping, RandomGaussianBlur
(same sigma range and kernel size), each view with BYOL's probabilities. What kornia cannot do
the same way is printed beside the times:

- brightness and contrast: one factor per image for all bands, where BYOL's ColorJitter and
  ours draw per band on multispectral data; kornia's contrast multiplies the values (no
  centring on the image mean), which on normalised reflectance (mean ~0) is a scaling;
- crop, flips and quarter turns are three resamplings (flips and turns exact) where ours is
  one `grid_sample`.

Times: median of `--iters` pairs of views of a batch, ours and kornia's interleaved so both see
the same machine, on `--threads` torch threads. A script, not a test; kornia is not a project
dependency: without it the script says so and exits. ``python benchmarks/augment_kornia.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rapid_utils import augment
from rapid_utils.io import write_json_atomic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=40, help="timed pairs of views per side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="input side, px")
    parser.add_argument("--out-size", type=int, default=32, help="view side, px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/augment_kornia.json"))
    return parser.parse_args(argv)


def kornia_views(out_size: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Kornia's closest counterpart of `augment.byol_views` (VIEW1 and VIEW2)."""
    import kornia.augmentation as K

    def view(config: augment.ViewConfig) -> K.AugmentationSequential:
        jitter = (1 - config.contrast, 1 + config.contrast)
        radius = max(1, round(out_size / 20))  # augment.gaussian_blur's kernel
        return K.AugmentationSequential(
            K.RandomResizedCrop((out_size, out_size), scale=config.crop_scale,
                                ratio=config.crop_ratio, align_corners=False),
            K.RandomHorizontalFlip(p=config.flip_p),
            K.RandomVerticalFlip(p=config.flip_p),
            K.RandomRotation90(times=(0, 3), p=1.0),
            K.RandomBrightness((1 - config.brightness, 1 + config.brightness),
                               clip_output=False, p=config.jitter_p),
            K.RandomContrast(jitter, clip_output=False, p=config.jitter_p),
            K.RandomGaussianBlur(2 * radius + 1, config.blur_sigma, p=config.blur_p),
        )

    first, second = view(augment.VIEW1), view(augment.VIEW2)
    return lambda batch: (first(batch), second(batch))


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        theirs = kornia_views(args.out_size)
    except ImportError:
        print("kornia is not installed (not a project dependency): `pip install kornia` to "
              "compare it with rapid_utils.augment")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = torch.randn(args.batch, 4, args.size, args.size)
    generator = torch.Generator().manual_seed(0)
    pipelines = {"ours": lambda: augment.byol_views(batch, generator, args.out_size),
                 "kornia": lambda: theirs(batch)}
    for call in pipelines.values():  # warm-up, untimed
        call()
    timings = {name: [] for name in pipelines}
    for _ in range(args.iters):  # interleaved: both see the same machine
        for name, call in pipelines.items():
            timings[name].append(seconds(call))
    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"two BYOL views of {args.batch} x 4 x {args.size} px to {args.out_size} px, "
          f"{args.threads} thread(s), median of {args.iters} (interleaved, this run)")
    print(f"{'pipeline':<10}{'ms':>9}{'ratio':>8}")
    for name, median in medians.items():
        print(f"{name:<10}{median * 1e3:>9.2f}{median / medians['ours']:>8.2f}")
    print("kornia differs: brightness/contrast one factor per image (ours per band), contrast "
          "scales instead of centring on the mean, crop/flip/turn resampled separately")
    write_json_atomic(args.out, {"ms": {k: v * 1e3 for k, v in medians.items()},
                                 "batch": args.batch, "size": args.size,
                                 "out_size": args.out_size, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
