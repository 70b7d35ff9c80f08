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


def reference_step() -> Callable[[], None]:
    """The reference step as a function, on fixed random views (what `reference_step_seconds`
    and `benchmarks/threads.py` time)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = models.build_model(REFERENCE_STEP["arch"], 4, 0)
        model = byol.BYOL(encoder, models.feature_dim(encoder), REFERENCE_STEP["hidden"],
                          REFERENCE_STEP["projection"])
        size = REFERENCE_STEP["size"]
        views = torch.randn(2, REFERENCE_STEP["batch"], 4, size, size)
    optimizer = byol.LARS(byol.parameter_groups(model, 1.5e-6), lr=0.125, momentum=0.9)

    def step() -> None:
        loss = model(views[0], views[1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_target(0.99)

    return step


def reference_step_seconds(iters: int = 5, warmup: int = 2) -> float:
    """Median seconds of the reference step with torch's current threads: the machine's speed
    in one number, recorded beside wall times so a reader can scale them to their own CPU
    (0.18 s on a quiet 2-core AMD EPYC, 2026-12-05)."""
    step = reference_step()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
