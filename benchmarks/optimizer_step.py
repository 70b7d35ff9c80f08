"""Fine-tuning's optimizer step: torch's for-loop, foreach and fused AdamW, beside the rest of
the step.

The model and batch are the quick profile's fine-tuning: resnet18 with 4 bands and 7 classes,
batch 32, 32 px chips. Each implementation steps a copy of the same model on the same batches;
a cell is the median of the timed steps, its ratio is to the for-loop step (torch's CPU default
before `finetuning._build_optimizer` chose fused) of the same run. The forward and backward pass
is timed too, so the optimizer's share of a whole step shows. The last column is the largest
weight difference from the for-loop run after the timed steps (float rounding, amplified where
Adam divides by a tiny second moment). A script, not a test:
``python benchmarks/optimizer_step.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from rapid_utils import distributed, models

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True},
                   "fused": {"fused": True}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32, help="chip side, px")
    return parser.parse_args(argv)


def time_steps(model: torch.nn.Module, options: dict, batches: list) -> tuple[float, float]:
    """Median seconds of the forward-backward pass and of the AdamW step over `batches`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, **options)
    passes, steps = [], []
    for images, labels in batches:
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        middle = time.perf_counter()
        optimizer.step()
        passes.append(middle - start)
        steps.append(time.perf_counter() - middle)
    return statistics.median(passes[1:]), statistics.median(steps[1:])  # first: warm-up


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = distributed.set_threads(0)
    torch.manual_seed(0)
    initial = models.build_model("resnet18", 4, 7, "random")
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 4, args.size, args.size, generator=generator),
                torch.randint(0, 7, (args.batch,), generator=generator))
               for _ in range(args.steps + 1)]
    timings, trained = {}, {}
    for name, options in IMPLEMENTATIONS.items():
        trained[name] = copy.deepcopy(initial)
        timings[name] = time_steps(trained[name], options, batches)
    print(f"AdamW step of resnet18 (4 bands, 7 classes), batch {args.batch} x {args.size} px, "
          f"{threads} torch threads, median of {args.steps} steps")
    print(f"{'implementation':<16}{'fwd+bwd s':>10}{'step s':>9}{'ratio':>7}{'share':>7}"
          f"{'max diff':>10}")
    loop_step = timings["for-loop"][1]
    for name, (passes, step) in timings.items():
        difference = max((a - b).abs().max().item() for a, b in zip(
            trained["for-loop"].parameters(), trained[name].parameters(), strict=True))
        print(f"{name:<16}{passes:>10.4f}{step:>9.4f}{step / loop_step:>7.2f}"
              f"{step / (passes + step):>7.0%}{difference:>10.1e}")


if __name__ == "__main__":
    main()
