"""GPU check: the ci profile trains on this machine's device, and BYOL's training throughput.

For the day a GPU is lent; on a CPU it runs the same at tiny sizes, so CI keeps it working.

1. Training, through the package's own entry points, with the values the ci profile's batch
   gives notebooks 03 and 04 (`notebook_batch.plan_jobs`): its embedded corpus and study, BYOL
   pretraining (`train.pretrain`) and its byol-100% fine-tuning (`study.finetune_config`,
   `train.finetune`), `--epochs` each (the profile's 1 shows no trend), on the profile's
   fixed seed, in a temporary RAPID_HOME. On CUDA both train with bf16 autocast and
   channels_last (`train.runtime.autocast`, `accelerate`); on CPU in float32.
   Check: a run's loss of an epoch is the mean over that epoch's optimizer steps (pretraining's
   `history`, fine-tuning's `per_epoch.train_loss`); it passes when every epoch's loss is
   finite and the last epoch's is below the first epoch's. (Pretraining warns that the
   encoder hardly moved: expected of the profile's LARS settings in a dozen steps.)
2. Throughput: `byol_throughput.measure`'s BYOL step of ResNet-50 (ours only; its reference
   model is built but not run), samples/s = batch / median step time, warm-up steps excluded;
   bf16 autocast and channels_last on CUDA. CUDA: 200 px, batches 64 and 256, 5 warm-up + 20
   timed steps; CPU: 16 px, batches 4 and 8, 1 + 2 steps. Its first loss must be finite.

Prints a table, writes JSON (atomically) and exits 1, naming what failed, when a check fails.
A script, not a test: ``python benchmarks/gpu_check.py --require-cuda`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import byol_throughput
import torch

from rapid_utils import distributed, notebook_batch, paths, provenance, study, train
from rapid_utils.io import write_json_atomic

PROFILE = "ci"
FINETUNE_SCENARIO = "byol-100%"  # the profile's fine-tuning of its BYOL checkpoint, all labels
THROUGHPUT_ARCH = "resnet50"  # `measure` builds lightly's reference too: 2048 features
# device type -> image side (px), batch sizes, warm-up steps, timed steps
THROUGHPUT = {"cuda": (200, (64, 256), 5, 20), "cpu": (16, (4, 8), 1, 2)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4,
                        help="pretraining and fine-tuning epochs (at least 2: a trend)")
    parser.add_argument("--require-cuda", action="store_true",
                        help="fail when torch sees no GPU (instead of checking on the CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("need --epochs >= 2: one epoch shows no trend")
    return args


def loss_problems(run: str, losses: Sequence[float]) -> list[str]:
    """Why a run's per-epoch losses fail the check (empty when they pass): a non-finite
    epoch, fewer than two epochs, or a last epoch not below the first."""
    bad = [epoch for epoch, loss in enumerate(losses, 1) if not math.isfinite(loss)]
    if bad:
        return [f"{run}: loss not finite at epoch(s) {bad}: {list(losses)}"]
    if len(losses) < 2:
        return [f"{run}: {len(losses)} epoch(s), need two to see the loss fall"]
    if losses[-1] >= losses[0]:
        return [f"{run}: loss did not fall, epoch 1 {losses[0]:.4f}, "
                f"epoch {len(losses)} {losses[-1]:.4f}"]
    return []


def batch_values(epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The values the profile's batch (`notebook_batch.plan_jobs`, under RAPID_HOME) runs
    notebook 03 and its `FINETUNE_SCENARIO` notebook 04 job with, `epochs` each."""
    values = notebook_batch.load_profile(PROFILE)
    jobs = notebook_batch.plan_jobs(PROFILE, values, notebook_batch.resolve_corpus(PROFILE, values))
    pretraining = next(job for job in jobs if job.notebook == "03_byol_pretraining")
    finetuning = next((job for job in jobs if job.scenario == FINETUNE_SCENARIO), None)
    if finetuning is None:
        raise SystemExit(f"gpu_check: profile {PROFILE!r} plans no {FINETUNE_SCENARIO} run")
    pre, fine = (notebook_batch.notebook_values(job.notebook, job.parameters | {"epochs": epochs})
                 for job in (pretraining, finetuning))
    return pre, fine


def train_profile(epochs: int) -> tuple[train.PretrainConfig, dict[str, list[float]]]:
    """Pretrain and fine-tune as notebooks 03 and 04 do with `batch_values`; per-epoch losses."""
    pre, fine = batch_values(epochs)
    arguments = study.study_arguments(pre)
    runs = arguments[1]
    data = study.load_study(*arguments)
    pretrain_config = study.pretrain_config(pre)
    history = train.pretrain(
        pretrain_config, data.corpus, data.pretraining_sites(), data.sites("val"),
        data.band_stats, paths.byol_run_dir(runs, pretrain_config.positives, pretrain_config.seed),
        progress=False, split_fingerprint=data.split_fingerprint)
    finetune_config = study.finetune_config(fine, runs)
    results = train.finetune(
        finetune_config, data.corpus, data.sites("train"), data.sites("val"), data.sites("test"),
        data.band_stats, paths.results_dir(runs) / train.results_name(finetune_config),
        progress=False, class_names=data.class_names)
    return pretrain_config, {"pretrain": [entry["loss"] for entry in history],
                             "finetune": results["per_epoch"]["train_loss"]}


def throughput(device: torch.device, size: int, batch_size: int, warmup: int,
               iters: int) -> dict[str, Any]:
    """BYOL training throughput of `THROUGHPUT_ARCH` (`byol_throughput.measure`, ours only)."""
    run = byol_throughput.measure({
        "size": size, "batch_size": batch_size, "arch": THROUGHPUT_ARCH, "iters": iters,
        "warmup": warmup, "seed": 0, "device": device.type, "order": ("ours",)})["ours"]
    median = statistics.median(run["step_s"])
    return {"batch_size": batch_size, "median_step_s": median,
            "samples_per_s": batch_size / median, "first_loss": run["first_loss"],
            # CUDA's max_memory_allocated is exact in a used process; CPU's peak RSS is not
            "peak_memory_growth_mib": (run["peak_memory_growth_bytes"] / 2**20
                                       if device.type == "cuda" else None),
            "step_s": run["step_s"]}


def _precision(device: torch.device) -> str:
    return "bf16 autocast, channels_last" if device.type == "cuda" else "float32"


def _training_table(device: torch.device, config: train.PretrainConfig,
                    losses: dict[str, list[float]]) -> str:
    lines = [f"training, {PROFILE} profile ({config.arch}, {config.image_size} px views, "
             f"seed {config.seed}), {_precision(device)}: loss per epoch (mean over its steps)",
             f"{'run':<10}{'first':>8}{'last':>8}  {'verdict':<8}per epoch"]
    for run, values in losses.items():
        verdict = "FAIL" if loss_problems(run, values) else "ok"
        lines.append(f"{run:<10}{values[0]:>8.4f}{values[-1]:>8.4f}  {verdict:<8}"
                     + " ".join(f"{v:.4f}" for v in values))
    return "\n".join(lines)


def _throughput_table(device: torch.device, size: int, warmup: int, iters: int,
                      rows: list[dict[str, Any]]) -> str:
    lines = [f"BYOL training step, {THROUGHPUT_ARCH}, 4 bands, {size} px, {_precision(device)}; "
             f"{warmup} warm-up + {iters} timed steps",
             f"{'batch':>6}{'median s/step':>15}{'samples/s':>11}{'peak mem MiB':>14}"]
    for row in rows:
        memory = row["peak_memory_growth_mib"]
        lines.append(f"{row['batch_size']:>6}{row['median_step_s']:>15.4f}"
                     f"{row['samples_per_s']:>11.1f}"
                     f"{'-' if memory is None else f'{memory:.0f}':>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train, measure, print, write; 0 when every check passes, else 1."""
    args = parse_args(argv)
    device = distributed.device(distributed.Context())  # what the training loops pick
    if args.require_cuda and device.type != "cuda":
        raise SystemExit("gpu_check: --require-cuda, but torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    threads = distributed.set_threads(0)
    print(f"GPU check on {provenance.machine()}, device {device}"
          + (f" ({gpu})" if gpu else f", {threads} torch threads"), flush=True)

    with tempfile.TemporaryDirectory(prefix="gpu_check-") as home:
        os.environ["RAPID_HOME"] = home  # the profile's corpus and runs, away from the repo's
        config, losses = train_profile(args.epochs)
    print(_training_table(device, config, losses), flush=True)  # before any throughput error
    size, batch_sizes, warmup, iters = THROUGHPUT[device.type]
    rows = [throughput(device, size, batch_size, warmup, iters) for batch_size in batch_sizes]

    problems = [problem for run, values in losses.items() for problem in loss_problems(run, values)]
    problems += [f"throughput, batch {row['batch_size']}: first loss {row['first_loss']} is not "
                 "finite" for row in rows if not math.isfinite(row["first_loss"])]
    print("\n" + _throughput_table(device, size, warmup, iters, rows))
    write_json_atomic(args.out, {
        "benchmark": "gpu_check", "machine": provenance.machine(), "device": str(device),
        "gpu": gpu, "torch": torch.__version__, "profile": PROFILE, "epochs": args.epochs,
        "losses_per_epoch": losses, "throughput": {"arch": THROUGHPUT_ARCH, "size": size,
                                                   "warmup": warmup, "iters": iters,
                                                   "rows": rows},
        "problems": problems,
    })
    print(f"wrote {args.out}")
    if problems:
        print("gpu_check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"gpu_check passed on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
