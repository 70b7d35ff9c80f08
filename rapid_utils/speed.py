"""The machine's speed in one number: the reference step, timed beside every wall time.

Wall times on this shared CPU change up to 3x between days; a time quoted with the reference
step of the same machine at the same moment can be scaled to any other CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from rapid_utils import byol, models

REFERENCE_STEP = {"arch": "resnet18", "batch": 32, "size": 32, "hidden": 1024, "projection": 128}
"""The reference step: one quick-profile BYOL step (forward, backward, LARS, target update)."""


def byol_step(arch: str = "resnet18", batch: int = 32, size: int = 32, hidden: int = 1024,
              projection: int = 128, stem: str = "imagenet") -> Callable[[], None]:
    """One BYOL optimisation step (forward of both views, backward, LARS, target update, as
    `train.pretrain` does; no augmentation) as a function, on fixed random 4-band views."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = models.build_model(arch, 4, 0, stem=stem)
        model = byol.BYOL(encoder, models.feature_dim(encoder), hidden, projection)
        views = torch.randn(2, batch, 4, size, size)
    optimizer = byol.LARS(byol.parameter_groups(model, 1.5e-6), lr=0.125, momentum=0.9)

    def step() -> None:
        loss = model(views[0], views[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(0.99)

    return step


def reference_step() -> Callable[[], None]:
    """The reference step (`REFERENCE_STEP`) as a function: what `reference_step_seconds` and
    `benchmarks/threads.py` time."""
    return byol_step(**REFERENCE_STEP)


def median_step_seconds(step: Callable[[], object], iters: int = 5, warmup: int = 2) -> float:
    """Median seconds of `iters` calls of `step` after `warmup` untimed ones (the median: one
    slow call on a shared machine does not move it)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_step_seconds(iters: int = 5, warmup: int = 2) -> float:
    """Median seconds of the reference step with torch's current threads: the machine's speed
    in one number, recorded beside wall times so a reader can scale them to their own CPU
    (0.18 s on a quiet 2-core AMD EPYC, 2026-12-05)."""
    return median_step_seconds(reference_step(), iters, warmup)
