"""What both training loops share: seeds, loaders, devices and DDP, unreadable samples,
model outputs over a loader and config comparison."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, fields

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from rapid_utils import distributed
from rapid_utils.corpus.reader import CorpusError
from rapid_utils.datasets import EpochSampler, keep_batch

log = logging.getLogger(__name__)



def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Config fields that change how fast batches arrive, not what is learnt: a run may resume, or
# a result be reused, with other values.
LOADER_FIELDS = ("num_workers", "pin_memory", "prefetch_factor")


def changed_fields(config: object, stored: dict | None) -> list[str]:
    """Config fields whose value differs from `stored`, loader settings aside.

    A field missing from `stored` counts as its default, so adding a config field with a
    default keeps the records written without it comparable.
    """
    if stored is None:
        return sorted(k for k in asdict(config) if k not in LOADER_FIELDS)
    defaults = {f.name: f.default for f in fields(config)}
    return sorted(
        k for k, v in asdict(config).items()
        if k not in LOADER_FIELDS and stored.get(k, defaults[k]) != v
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = True,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    context: distributed.Context | None = None,
    samples_per_epoch: int = 0,
) -> DataLoader:
    """A DataLoader whose order and random dates follow `seed` and the epoch alone.

    Build it once per run and call `loader.sampler.set_epoch(epoch)` before each epoch: its
    worker processes persist, and every epoch is the same whatever `num_workers`, on resuming
    too (`EpochSampler`). With a multi-process `context`, each process reads its own shard of
    the epoch's order and `batch_size` is per process. `samples_per_epoch` larger than the
    dataset repeats whole shuffled passes. Pinned memory applies on CUDA only;
    `prefetch_factor` batches per worker are loaded ahead.
    """
    ranks = {"rank": context.rank, "world_size": context.world_size} if (
        context is not None and context.active) else {}
    sampler = EpochSampler(len(dataset), seed, shuffle, samples_per_epoch if shuffle else 0,
                           drop_last=drop_last, **ranks)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=keep_batch,  # our Datasets' __getitems__ collate (store: batched reads)
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


def accelerate(model: nn.Module, device: torch.device, context: distributed.Context) -> nn.Module:
    """Move to `device`; on CUDA use SyncBatchNorm across processes and channels_last."""
    if device.type == "cuda":
        if context.active:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(memory_format=torch.channels_last)
    return model.to(device)


def raw_batches(device: torch.device) -> bool:
    """Whether store Datasets hand raw uint16 batches, normalised on `device` (GPUs): CPU
    workers then only read, and host-to-device copies carry half the bytes."""
    return device.type == "cuda"


def to_device(
    images: torch.Tensor, device: torch.device, dataset: Dataset | None = None
) -> torch.Tensor:
    """A float batch on `device`, channels_last on CUDA (matching `accelerate`).

    A raw (integer) batch from a packed store is normalised on `device` by its `dataset`.
    """
    images = images.to(device, non_blocking=True)
    if not images.is_floating_point():
        images = dataset.normalise_batch(images)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def wrap_ddp(model: nn.Module, device: torch.device, context: distributed.Context) -> nn.Module:
    """DistributedDataParallel around `model` when several processes train, else `model`."""
    if not context.active:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def mean_over_processes(value: float, context: distributed.Context) -> float:
    return distributed.sum_over_processes([value], context)[0] / context.world_size


UNREADABLE_SHARE = 0.01
"""Share of sample reads that may fail (truncated or missing rasters, replaced by other
samples) before a run stops with the list: one bad file of millions must not end a run of
hours, but a broken corpus must not train quietly on what is left."""


class UnreadableLog:
    """The unreadable samples a run's Datasets replaced (`datasets.read_or_replace`), counted.

    Under torchrun each process counts its own reads; `check` decides on the sums over all
    processes, so every process stops together (one stopping alone would leave the others
    waiting at the next collective step).
    """

    def __init__(self, recorded: dict[str, str] | None = None,
                 context: distributed.Context | None = None) -> None:
        self.reasons: dict[str, str] = dict(recorded or {})  # sample id -> first reason
        self.failed = 0
        self.read = 0
        self.context = context or distributed.Context()

    def note(self, batch: dict) -> None:
        """Count a batch's reads and the failed ones its items report."""
        self.read += len(batch["label"])
        for text in batch.get("unreadable") or ():
            for line in filter(None, text.split("\n")):
                sample_id, _, reason = line.partition(": ")
                self.reasons.setdefault(sample_id, reason)
                self.failed += 1

    def check(self) -> None:
        """Stop, listing the samples, when more than `UNREADABLE_SHARE` of the reads failed.

        Every process must call it at the same point; each then also holds all processes'
        reasons (what rank 0 records).
        """
        failed, read = distributed.sum_over_processes([self.failed, self.read], self.context)
        if failed:
            for reasons in distributed.gather_objects(self.reasons, self.context):
                for sample_id, reason in reasons.items():
                    self.reasons.setdefault(sample_id, reason)
        if failed <= UNREADABLE_SHARE * read:
            return
        listed = "; ".join(f"{sid}: {why}" for sid, why in list(self.reasons.items())[:20])
        raise CorpusError(
            f"{failed:.0f} of {read:.0f} sample reads failed, more than "
            f"{UNREADABLE_SHARE:.0%}: {listed}. Repair or remove these sites (check the whole "
            "corpus with rapid_utils.corpus.reader.verify_sites), then rerun"
        )


def augment_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def model_outputs(
    model: nn.Module, loader: DataLoader, device: torch.device,
    unreadable: UnreadableLog | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """Outputs of `model` (eval mode), labels and dates over `loader`, on the CPU.

    Outputs are (N, T, D): T dates per site (1 for single-date sampling); dates[n][t] is the
    ISO date of output [n, t].
    """
    was_training = model.training
    model.eval()
    outputs, targets, dates = [], [], []
    for batch in loader:
        if unreadable is not None:
            unreadable.note(batch)
        image = to_device(batch["image"], device, loader.dataset)
        series = image.ndim == 5
        with autocast(device):
            flat = image.flatten(0, 1) if series else image
            output = model(flat).float().cpu()
        outputs.append(output.unflatten(0, image.shape[:2]) if series else output[:, None])
        targets.append(batch["label"])
        # a collated series of dates is one list per date position, each of the batch's sites
        dates += (list(map(list, zip(*batch["date"], strict=True))) if series
                  else [[date] for date in batch["date"]])
    model.train(was_training)
    return torch.cat(outputs), torch.cat(targets), dates
