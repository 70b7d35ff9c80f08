"""BYOL training throughput and peak memory: our step next to lightly's reference BYOL.

Times one BYOL optimisation step of the 4-band ResNet encoder, on an already-augmented pair of
random 4-band batches (augmentation is not timed), for two implementations on the same batch,
from the same initial weights, with the same optimiser settings:

- ``ours``: `rapid_utils.byol.BYOL` forward (symmetric loss) + backward + `byol.LARS` step +
  `update_target(tau)`, as in `rapid_utils.train.pretrain`.
- ``reference``: lightly's documented BYOL example (BYOLProjectionHead, BYOLPredictionHead,
  deep-copied momentum backbone/head with `deactivate_requires_grad`, `update_momentum`,
  `NegativeCosineSimilarity`, loss 0.5 * (criterion(p0, z1) + criterion(p1, z0))) around the same
  encoder, optimised by `lightly.utils.lars.LARS` (torch SGD when lightly has no LARS).

Each image size runs in two fresh processes, one per order (ours first, reference first), so
neither implementation always gets the warm caches; the timed steps of both orders are pooled.
On CUDA both use bf16 autocast and channels_last, as `pretrain` does. Prints a table and writes
JSON (atomically). A script, not a test: ``python benchmarks/byol_throughput.py --help``.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from rapid_utils import augment, byol, models, provenance
from rapid_utils.io import write_json_atomic

IMPLEMENTATIONS = ("ours", "reference")
BASE_LR = 0.2  # LARS lr = BASE_LR * batch / 256, PretrainConfig's default (held constant here)
WEIGHT_DECAY = 1.5e-6  # PretrainConfig's default
MOMENTUM = 0.9
TAU_BASE = 0.99
HIDDEN_DIM, PROJECTION_DIM = 4096, 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; batch, iteration and warm-up defaults depend on the device."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 200], help="image sides, px")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 CPU, 256 CUDA")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per implementation "
                        "and order (default 3 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first "
                        "(default 1 CPU, 5 CUDA)")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/byol_throughput.json"))
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    if args.batch_size is None:
        # 8 keeps the CPU default run (2 sizes x 2 orders x 2 implementations) near 5 min.
        args.batch_size = 256 if cuda else 8
    if args.iters is None:
        args.iters = 20 if cuda else 3
    if args.warmup is None:
        args.warmup = 5 if cuda else 1
    if args.batch_size < 2 or args.iters < 1 or args.warmup < 1:
        parser.error("need --batch-size >= 2 (BatchNorm), --iters >= 1 and --warmup >= 1")
    return args


# --------------------------------------------------------------------------- the two steps


class _Ours:
    """Our BYOL step, as in `rapid_utils.train.pretrain` (lr held constant)."""

    def __init__(self, encoder: torch.nn.Module, lr: float) -> None:
        self.model = byol.BYOL(encoder, models.feature_dim(encoder), HIDDEN_DIM, PROJECTION_DIM)
        self.optimizer = byol.LARS(
            byol.parameter_groups(self.model, WEIGHT_DECAY), lr=lr, momentum=MOMENTUM
        )

    def heads(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.model.projector, self.model.predictor

    def to(self, device: torch.device) -> None:
        self.model = _place(self.model, device)

    def step(self, x0: torch.Tensor, x1: torch.Tensor, k: int, total: int, amp) -> torch.Tensor:
        with amp:
            loss = self.model(x0, x1).float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.update_target(byol.tau_schedule(k, total, TAU_BASE))
        return loss.detach()


class _Reference:
    """lightly's documented BYOL example (docs: Examples > BYOL), around our encoder."""

    def __init__(self, encoder: torch.nn.Module, lr: float) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        class BYOL(torch.nn.Module):
            def __init__(self, backbone: torch.nn.Module) -> None:
                super().__init__()
                self.backbone = backbone
                self.projection_head = BYOLProjectionHead(2048, HIDDEN_DIM, PROJECTION_DIM)
                self.prediction_head = BYOLPredictionHead(PROJECTION_DIM, HIDDEN_DIM,
                                                          PROJECTION_DIM)
                self.backbone_momentum = copy.deepcopy(self.backbone)
                self.projection_head_momentum = copy.deepcopy(self.projection_head)
                deactivate_requires_grad(self.backbone_momentum)
                deactivate_requires_grad(self.projection_head_momentum)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = self.backbone(x).flatten(start_dim=1)
                return self.prediction_head(self.projection_head(y))

            def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
                y = self.backbone_momentum(x).flatten(start_dim=1)
                return self.projection_head_momentum(y).detach()

        if models.feature_dim(encoder) != 2048:
            raise SystemExit(f"lightly's example assumes 2048 features; {encoder} has "
                             f"{models.feature_dim(encoder)} (use a ResNet-50-sized --arch)")
        self.model = BYOL(encoder)
        self.criterion = NegativeCosineSimilarity()
        groups = byol.parameter_groups(self.model, WEIGHT_DECAY)
        try:
            from lightly.utils.lars import LARS
        except ImportError:
            self.optimizer_name = "torch.optim.SGD"
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM)
        else:
            # Groups with weight decay 0 (biases, norms) skip the trust ratio, like ours.
            self.optimizer_name = "lightly.utils.lars.LARS"
            self.optimizer = LARS(groups, lr=lr, momentum=MOMENTUM)

    def heads(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.model.projection_head, self.model.prediction_head

    def to(self, device: torch.device) -> None:
        self.model = _place(self.model, device)

    def step(self, x0: torch.Tensor, x1: torch.Tensor, k: int, total: int, amp) -> torch.Tensor:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = self.model
        momentum_val = cosine_schedule(k, total, TAU_BASE, 1.0)
        update_momentum(m.backbone, m.backbone_momentum, m=momentum_val)
        update_momentum(m.projection_head, m.projection_head_momentum, m=momentum_val)
        with amp:
            p0 = m(x0)
            z0 = m.forward_momentum(x0)
            p1 = m(x1)
            z1 = m.forward_momentum(x1)
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.detach()


def _place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """On `device`; channels_last on CUDA as `rapid_utils.train.pretrain` does."""
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.to(device)


def _copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy a head's state into lightly's equivalent (same layers, other key names)."""
    src, dst = source.state_dict(), target.state_dict()
    if [v.shape for v in src.values()] != [v.shape for v in dst.values()]:
        raise RuntimeError(f"heads differ: {list(src)} vs {list(dst)}")
    target.load_state_dict(dict(zip(dst, src.values(), strict=True)))


# --------------------------------------------------------------------------- memory

# Peak memory of the training steps of one implementation, as growth over the state just before
# its first step (models, optimiser and batch already built):
# - CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus
#   memory_allocated() before: exact for tensors, excludes the caching allocator's reserve.
# - CPU: the rise of the process's peak resident set size (getrusage ru_maxrss). tracemalloc is
#   no use here: it only sees Python's allocator, not torch's C++ tensor memory. ru_maxrss is a
#   high-water mark of the whole process that never goes down: it counts pages touched (also
#   allocator slack and fragmentation, not freed back to the OS), and after a first workload the
#   allocator's retained pages hide a second one's needs. So it is only read for the
#   implementation that runs first in a fresh process; each order gives one of the two.


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS bytes, Linux KiB


class _PeakMemory(AbstractContextManager):
    def __init__(self, device: torch.device) -> None:
        self.device, self.growth = device, None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = _rss_peak_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.growth = _rss_peak_bytes() - self.start


# --------------------------------------------------------------------------- one process


def _views(size: int, batch_size: int, seed: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Two augmented views (our BYOL augmentations) of a seeded random normalised 4-band batch."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 4, size, size, generator=generator)
    views = augment.byol_views(images, generator)
    if device.type == "cuda":
        return tuple(v.to(device).contiguous(memory_format=torch.channels_last) for v in views)
    return views


def measure(job: dict) -> dict:
    """Run both implementations in `job["order"]` in this (fresh) process; times and memory."""
    device = torch.device(job["device"])
    torch.manual_seed(job["seed"])
    encoder = models.build_model(job["arch"], 4, num_classes=0)
    reference_encoder = copy.deepcopy(encoder)  # the same initial weights for both
    lr = BASE_LR * job["batch_size"] / 256
    steps = {"ours": _Ours(encoder, lr), "reference": _Reference(reference_encoder, lr)}
    for ours_head, ref_head in zip(steps["ours"].heads(), steps["reference"].heads(), strict=True):
        _copy_weights(ours_head, ref_head)
    steps["reference"].model.projection_head_momentum.load_state_dict(
        steps["reference"].model.projection_head.state_dict()
    )
    steps["ours"].to(device)
    steps["reference"].to(device)
    x0, x1 = _views(job["size"], job["batch_size"], job["seed"], device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total = job["warmup"] + job["iters"]

    out = {"order": list(job["order"]), "optimizer_reference": steps["reference"].optimizer_name}
    for position, name in enumerate(job["order"]):
        times, first_loss = [], None
        with _PeakMemory(device) as memory:
            for k in range(total):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                loss = steps[name].step(x0, x1, k, total, amp)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if k >= job["warmup"]:
                    times.append(time.perf_counter() - start)
                if k == 0:
                    first_loss = float(loss)
        out[name] = {
            "position": position,
            "step_s": times,
            "first_loss": first_loss,
            # Only the first implementation in a fresh process has a fair CPU figure (see above).
            "peak_memory_growth_bytes": memory.growth if position == 0 else None,
        }
        del steps[name]  # free its model before the next one runs
    return out


# --------------------------------------------------------------------------- driver


def _run_fresh(job: dict) -> dict:
    """`measure(job)` in a new spawned process (clean peak RSS, no warm caches from others)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (job,))


def _machine(device: str) -> dict:
    import lightly
    import torchvision

    facts = {
        "platform": platform.platform(),
        "machine": provenance.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightly": lightly.__version__,
        "device": device,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


def summarise(size: int, batch_size: int, runs: list[dict]) -> dict:
    """Pool both orders: median step time, samples/s, per-order medians, memory, loss check."""
    row: dict = {"size": size}
    for name in IMPLEMENTATIONS:
        times = [t for run in runs for t in run[name]["step_s"]]
        median = statistics.median(times)
        row[name] = {
            "median_step_s": median,
            "samples_per_s": batch_size / median,
            "median_step_s_when_first": statistics.median(
                t for run in runs if run[name]["position"] == 0 for t in run[name]["step_s"]),
            "median_step_s_when_second": statistics.median(
                t for run in runs if run[name]["position"] == 1 for t in run[name]["step_s"]),
            "peak_memory_growth_mib": next(
                run[name]["peak_memory_growth_bytes"] / 2**20 for run in runs
                if run[name]["position"] == 0),
            "step_s": times,
        }
    row["ratio_ours_over_reference"] = (
        row["ours"]["samples_per_s"] / row["reference"]["samples_per_s"]
    )
    # Same weights and batch: our loss sum_v (2 - 2 cos) is 4 + 4 x lightly's mean(-cos).
    ours_loss, ref_loss = runs[0]["ours"]["first_loss"], runs[0]["reference"]["first_loss"]
    row["first_loss"] = {"ours": ours_loss, "reference": ref_loss,
                         "ours_from_reference": 4 + 4 * ref_loss}
    return row


def _table(rows: list[dict], batch_size: int) -> str:
    header = (f"{'px':>4} {'impl':<10} {'median s/step':>13} {'samples/s':>10} "
              f"{'s/step 1st|2nd':>15} {'peak mem MiB':>12} {'ours/ref':>9}")
    lines = [f"batch {batch_size}", header, "-" * len(header)]
    for row in rows:
        for name in IMPLEMENTATIONS:
            r = row[name]
            ratio = f"{row['ratio_ours_over_reference']:.3f}" if name == "ours" else ""
            lines.append(
                f"{row['size']:>4} {name:<10} {r['median_step_s']:>13.3f} "
                f"{r['samples_per_s']:>10.2f} "
                f"{r['median_step_s_when_first']:>7.3f}|{r['median_step_s_when_second']:<7.3f} "
                f"{r['peak_memory_growth_mib']:>12.0f} {ratio:>9}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, runs_by_size, optimizer_reference = [], {}, None
    for size in args.sizes:
        runs = []
        for order in (IMPLEMENTATIONS, IMPLEMENTATIONS[::-1]):
            job = {"size": size, "batch_size": args.batch_size, "arch": args.arch,
                   "iters": args.iters, "warmup": args.warmup, "seed": args.seed,
                   "device": args.device, "order": order}
            print(f"{size} px, order {' then '.join(order)} ...", flush=True)
            runs.append(_run_fresh(job))
        optimizer_reference = runs[0]["optimizer_reference"]
        rows.append(summarise(size, args.batch_size, runs))
        runs_by_size[size] = runs

    machine = _machine(args.device)
    print(f"\nBYOL training step, {args.arch}, 4 bands, {args.device} "
          f"({machine['machine']}, {machine['torch_threads']} torch threads"
          + (f", {machine['gpu']}" if args.device == "cuda" else "") + "); "
          f"ours: byol.LARS, reference: {optimizer_reference}; "
          f"{args.warmup} warm-up + {args.iters} timed steps per implementation and order")
    print(_table(rows, args.batch_size))
    memory = ("CUDA max_memory_allocated growth over the step's start" if args.device == "cuda"
              else "rise of peak RSS (ru_maxrss) during the steps, fresh process, run first")
    print(f"peak mem: {memory}; s/step 1st|2nd: median when run first | second in its process")
    for row in rows:
        loss = row["first_loss"]
        print(f"{row['size']} px first-step loss: ours {loss['ours']:.5f}, "
              f"4 + 4 x reference {loss['ours_from_reference']:.5f} (same weights, same batch)")
        if abs(loss["ours"] - loss["ours_from_reference"]) > 1e-2 * max(1.0, abs(loss["ours"])):
            print(f"WARNING {row['size']} px: first losses disagree (ours {loss['ours']:.5f}, "
                  f"4 + 4 x reference {loss['ours_from_reference']:.5f}): not the same computation")

    write_json_atomic(args.out, {
        "benchmark": "byol_throughput",
        "arch": args.arch,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "warmup": args.warmup,
        "seed": args.seed,
        "optimizer": {"ours": "rapid_utils.byol.LARS", "reference": optimizer_reference,
                      "base_lr": BASE_LR, "weight_decay": WEIGHT_DECAY, "momentum": MOMENTUM,
                      "tau_base": TAU_BASE},
        "precision": "bf16 autocast, channels_last" if args.device == "cuda" else "float32",
        "peak_memory": memory,
        "machine": machine,
        "results": rows,
        "runs": runs_by_size,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
