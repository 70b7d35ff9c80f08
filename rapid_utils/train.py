"""Training loops: BYOL pretraining (checkpointed, resumable) and land-cover fine-tuning.

Both loops run on whatever device they find (CUDA when present, else CPU) and are seeded end to
end: the same seed on the same machine gives the same weights and metrics. Under `torchrun` they
train data-parallel (DistributedDataParallel; SyncBatchNorm on GPUs; the EMA target updated
once per optimizer step on every process; only rank 0 evaluates and writes). On CUDA, forward
passes run in bf16 autocast with channels_last tensors.

Poster scale (ResNet-50, 200 px, ~375K training sites), one node with 8 GPUs:
    torchrun --standalone --nproc_per_node=8 -m rapid_utils.cli pretrain ...
(see the README, "Scaling up", for the exact command).
Fine-tuning writes one results file per run; pretraining one checkpoint that `models.build_model`
reads with ``init="byol:<path>"``.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

import rapid_utils
from rapid_utils import augment, byol, distributed, labels, metrics, models, paths, splits
from rapid_utils.corpus import layout
from rapid_utils.corpus.reader import CorpusError
from rapid_utils.datasets import BandStats, keep_batch, open_dataset
from rapid_utils.io import atomic_path, file_sha256, replace_keeping_previous, write_json_atomic
from rapid_utils.messages import gist

log = logging.getLogger(__name__)

CHECKPOINT_FILE = paths.CHECKPOINT_FILE

FINETUNE_VIEW = augment.ViewConfig(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, blur_p=0.0
)
"""Fine-tuning augmentation: random flips and quarter turns only (land cover has no 'up')."""


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker init: derive numpy/python seeds from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# Config fields that change how fast batches arrive, not what is learnt: a run may resume, or
# a result be reused, with other values.
LOADER_FIELDS = ("num_workers", "pin_memory", "prefetch_factor")
# What a run did before a config field existed, when that differs from the field's default:
# a results file or checkpoint without the field is compared as holding this value.
BEFORE_FIELD_EXISTED = {"eval_dates": "first"}


def _changed_fields(config: object, stored: dict | None) -> list[str]:
    """Config fields whose value differs from `stored`, loader settings aside.

    A field missing from `stored` (written before the field existed) counts as its default.
    """
    if stored is None:
        return sorted(k for k in asdict(config) if k not in LOADER_FIELDS)
    defaults = {f.name: f.default for f in fields(config)} | BEFORE_FIELD_EXISTED
    return sorted(
        k for k, v in asdict(config).items()
        if k not in LOADER_FIELDS and stored.get(k, defaults[k]) != v
    )


def _loader(
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
    """A DataLoader whose order and worker seeds follow `seed` alone.

    With a multi-process `context`, each process reads its own shard of a shuffled order
    (DistributedSampler seeded by `seed`) and `batch_size` is per process. Pinned memory
    applies on CUDA only; `prefetch_factor` batches per worker are loaded ahead.
    `samples_per_epoch` larger than the dataset repeats whole shuffled passes (one process).
    """
    sampler = None
    if shuffle and samples_per_epoch > len(dataset):
        sampler = RandomSampler(dataset, num_samples=samples_per_epoch,
                                generator=torch.Generator().manual_seed(seed))
        shuffle = False
    elif context is not None and context.active:
        sampler = DistributedSampler(
            dataset, context.world_size, context.rank, shuffle=shuffle, seed=seed,
            drop_last=drop_last,
        )
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=keep_batch,  # our Datasets' __getitems__ collate (store: batched reads)
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )


def _accelerate(model: nn.Module, device: torch.device, context: distributed.Context) -> nn.Module:
    """Move to `device`; on CUDA use SyncBatchNorm across processes and channels_last."""
    if device.type == "cuda":
        if context.active:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(memory_format=torch.channels_last)
    return model.to(device)


def _raw_batches(device: torch.device) -> bool:
    """Whether store Datasets hand raw uint16 batches, normalised on `device` (GPUs): CPU
    workers then only read, and host-to-device copies carry half the bytes."""
    return device.type == "cuda"


def _to_device(
    images: torch.Tensor, device: torch.device, dataset: Dataset | None = None
) -> torch.Tensor:
    """A float batch on `device`, channels_last on CUDA (matching `_accelerate`).

    A raw (integer) batch from a packed store is normalised on `device` by its `dataset`.
    """
    images = images.to(device, non_blocking=True)
    if not images.is_floating_point():
        images = dataset.normalise_batch(images)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _wrap(model: nn.Module, device: torch.device, context: distributed.Context) -> nn.Module:
    """DistributedDataParallel around `model` when several processes train, else `model`."""
    if not context.active:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def _mean_over_processes(value: float, context: distributed.Context) -> float:
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


def _augment_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def _features(
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
        image = _to_device(batch["image"], device, loader.dataset)
        series = image.ndim == 5
        with _autocast(device):
            flat = image.flatten(0, 1) if series else image
            output = model(flat).float().cpu()
        outputs.append(output.unflatten(0, image.shape[:2]) if series else output[:, None])
        targets.append(batch["label"])
        # a collated series of dates is one list per date position, each of the batch's sites
        dates += (list(map(list, zip(*batch["date"], strict=True))) if series
                  else [[date] for date in batch["date"]])
    model.train(was_training)
    return torch.cat(outputs), torch.cat(targets), dates


# --------------------------------------------------------------------------- BYOL pretraining


@dataclass(frozen=True)
class PretrainConfig:
    """Parameters of a BYOL pretraining run (all of them are stored in the checkpoint)."""

    arch: str = "resnet50"
    epochs: int = 10
    batch_size: int = 256
    base_lr: float = 0.2  # LARS peak lr = base_lr * batch_size / 256 (BYOL Appendix C)
    weight_decay: float = 1.5e-6
    # BYOL's 0.996 suits hundreds of epochs; the poster trains ~10, so the EMA horizon
    # 1 / (1 - tau) (100 steps at 0.99) must stay a small share of all optimizer steps.
    tau_base: float = 0.99
    warmup_epochs: int = 1
    image_size: int = 200  # side of the augmented views, px
    positives: str = "augment"  # "augment": two views of one image; "temporal": two dates
    colour_jitter: float = 0.4  # brightness and contrast jitter strength of the views (0: none)
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes (per training process)
    pin_memory: bool = True  # page-locked batches for faster host-to-GPU copies (CUDA only)
    prefetch_factor: int = 2  # batches each worker loads ahead
    optimizer: str = "lars"  # "lars" or "sgd"
    # LARS trust coefficient: each step moves a layer's weights by about lr * lars_trust of their
    # norm. BYOL's 0.001 suits lr 3.2 over ~100K steps; small batches and a few hundred steps
    # need more (solo-learn trains BYOL on CIFAR with 0.02) or the encoder hardly leaves its
    # random initialisation (see `encoder_change` in the history).
    lars_trust: float = 0.001
    hidden_dim: int = 4096  # projector/predictor hidden width (BYOL)
    projection_dim: int = 256
    knn_sites: int = 1000  # labelled train and val sites for the per-epoch kNN guard
    knn_k: int = 20

    def __post_init__(self) -> None:
        if self.positives not in ("augment", "temporal"):
            raise ValueError(f"positives must be 'augment' or 'temporal', got {self.positives!r}")
        if self.optimizer not in ("lars", "sgd"):
            raise ValueError(f"optimizer must be 'lars' or 'sgd', got {self.optimizer!r}")
        augment.byol_view_configs(self.colour_jitter)  # a bad strength fails here, named


def _build_optimizer(model: nn.Module, config: PretrainConfig) -> torch.optim.Optimizer:
    groups = byol.parameter_groups(model, config.weight_decay)
    if config.optimizer == "lars":
        return byol.LARS(groups, lr=0.0, momentum=0.9, eta=config.lars_trust)
    return torch.optim.SGD(groups, lr=0.0, momentum=0.9)


def _rng_state(loader_generator: torch.Generator) -> dict:
    """Global RNG states in types `torch.load(weights_only=True)` accepts."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, key.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
        # Loaders are reseeded from seed + epoch, so this is a record rather than needed to resume.
        "loader": loader_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write `checkpoint` durably; the epoch before stays as `previous_checkpoint(path)`
    until the new file is complete, so a killed run always leaves one whole checkpoint."""
    new = path.with_name(f".{path.name}.new")
    with atomic_path(new) as tmp:
        torch.save(checkpoint, tmp)
    replace_keeping_previous(new, path, previous_checkpoint(path))


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint of the epoch before `path`'s is kept."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def pretrain_provenance(
    train_index: pd.DataFrame, band_stats: BandStats, split_fingerprint: str
) -> dict:
    """What a BYOL checkpoint was trained on and expects: the study's split fingerprint, a
    fingerprint of the pretraining sites, and the normalisation (bands, scale, mean, std)."""
    return {
        "split_fingerprint": split_fingerprint or None,
        "pretraining_sites_fingerprint": splits.fingerprint(
            train_index, pd.Series("pretraining", index=train_index.index)),
        "band_stats_fingerprint": band_stats.fingerprint(),
        "bands": list(layout.BANDS),
        "scale": layout.REFLECTANCE_SCALE,
        "mean": list(band_stats.mean),
        "std": list(band_stats.std),
    }


def _resume_checkpoint(path: Path, config: PretrainConfig, provenance: dict) -> dict | None:
    """The checkpoint to resume from: `path`, or the previous epoch's when `path` is missing
    or unreadable (truncated, corrupt); None when there is neither (start afresh).

    Refuses one written with other parameters, sites or band statistics: resuming it would
    jump the schedules or change the normalisation mid-run.
    """
    problems = []
    for candidate in (path, previous_checkpoint(path)):
        if not candidate.is_file():
            continue
        try:
            checkpoint = torch.load(candidate, map_location="cpu", weights_only=True)
            epoch = int(checkpoint["epoch"])
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError,
                pickle.UnpicklingError) as error:
            # torch's own messages run to paragraphs (and suggest unsafe loading): the gist
            short = gist(str(error), empty="")
            problems.append(f"{candidate} (truncated or corrupt: {type(error).__name__}: {short})")
            log.warning("checkpoint %s is unreadable (%s: %s); trying the previous epoch's",
                        candidate, type(error).__name__, short)
            continue
        changed = _changed_fields(config, checkpoint.get("config"))
        recorded = checkpoint.get("provenance") or {}
        changed += [key for key in ("pretraining_sites_fingerprint", "band_stats_fingerprint",
                                    "split_fingerprint")
                    if recorded.get(key, provenance[key]) != provenance[key]]
        if changed:
            raise ValueError(
                f"{candidate} was written by a pretraining run with other parameters, sites or "
                f"band statistics (differing: {changed}); use another out_dir or delete the "
                "file to start afresh"
            )
        if problems:
            log.warning("resuming from %s (epoch %d)", candidate, epoch)
        return checkpoint
    if problems:
        raise ValueError(
            f"no readable checkpoint to resume from: {'; '.join(problems)}. Delete these files "
            "to start the pretraining afresh"
        )
    return None


def _knn_subset(index: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return index if len(index) <= n else index.sample(n, random_state=seed)


def pretrain(
    config: PretrainConfig,
    corpus_root: str | Path,
    train_index: pd.DataFrame,
    val_index: pd.DataFrame,
    band_stats: BandStats,
    out_dir: str | Path,
    progress: bool = True,
    split_fingerprint: str = "",
) -> list[dict]:
    """Pretrain a BYOL encoder on `train_index` sites; return the per-epoch history.

    `train_index` may hold unlabelled sites (label -1); they are left out of the kNN guard.

    Each epoch logs `loss`, `projection_std` and `knn_accuracy` (collapse guards, on up to
    `knn_sites` labelled train and val sites, each at one date fixed per site),
    `encoder_change` (relative distance of the encoder's weights from their initialisation; a
    warning says when training ends below `metrics.MIN_ENCODER_CHANGE`), `lr` and `tau` (at
    the last step), then saves ``out_dir/checkpoint.pt`` with its `provenance`: the study's
    `split_fingerprint` (`Study.split_fingerprint`; fine-tuning refuses a checkpoint of
    another split), the band statistics and their fingerprint, and a fingerprint of the
    pretraining sites. A checkpoint with the same config, sites and statistics is resumed; one
    with others is refused (the learning-rate and EMA schedules depend on the sites).
    """
    context = distributed.setup()
    device = distributed.device(context)
    path = Path(out_dir) / CHECKPOINT_FILE
    seed_everything(config.seed)
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} (global) must divide by the {context.world_size} "
            "processes"
        )

    encoder = models.build_model(config.arch, in_channels=4, num_classes=0)
    model = byol.BYOL(
        encoder, models.feature_dim(encoder), config.hidden_dim, config.projection_dim
    )
    initial_encoder = metrics.weight_snapshot(model.encoder)
    model = _accelerate(model, device, context)
    optimizer = _build_optimizer(model, config)

    sampling = "pair" if config.positives == "temporal" else "random"
    raw = _raw_batches(device)
    dataset = open_dataset(corpus_root, train_index, band_stats, date_sampling=sampling, raw=raw)
    local_batch = config.batch_size // context.world_size
    steps_per_epoch = (len(dataset) // context.world_size) // local_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(dataset)} training sites"
        )
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(config.warmup_epochs * steps_per_epoch, total_steps - 1)
    loading = {k: getattr(config, k) for k in LOADER_FIELDS}

    labelled_train = train_index[train_index["label"] >= 0]  # unlabelled sites have label -1
    knn_train, knn_val = (
        _loader(
            open_dataset(
                corpus_root, _knn_subset(index, config.knn_sites, config.seed), band_stats,
                date_sampling="spread", raw=raw,
            ),
            config.batch_size, config.seed, shuffle=False, **loading,
        )
        for index in (labelled_train, val_index)
    )

    history: list[dict] = []
    start_epoch, step = 0, 0
    provenance = pretrain_provenance(train_index, band_stats, split_fingerprint)
    checkpoint = _resume_checkpoint(path, config, provenance)
    unreadable = UnreadableLog(checkpoint.get("unreadable_samples") if checkpoint else None,
                               context)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["byol"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, step = checkpoint["epoch"], checkpoint["global_step"]
        history = checkpoint["history"]
        _set_rng_state(checkpoint["rng"])
    trainer = _wrap(model, device, context)

    for epoch in range(start_epoch, config.epochs):
        loader = _loader(
            dataset, local_batch, config.seed + epoch, shuffle=True, drop_last=True,
            context=context, **loading,
        )
        # Each process draws its own views; rank 0 matches a single-process run.
        views_rng = _augment_generator(config.seed + epoch + 100_003 * context.rank, device)
        model.train()
        losses = []
        for batch in tqdm(loader, desc=f"BYOL epoch {epoch + 1}/{config.epochs}",
                          disable=not (progress and context.is_main), leave=False):
            unreadable.note(batch)
            view1, view2 = _byol_views(batch, config, views_rng, device, dataset)
            lr = byol.lr_schedule(
                step, total_steps, config.base_lr, config.batch_size, warmup_steps
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            with _autocast(device):
                loss = trainer(view1, view2).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tau = byol.tau_schedule(step, total_steps, config.tau_base)
            model.update_target(tau)  # identical on every process: same online weights
            step += 1
            losses.append(loss.item())

        unreadable.check()
        entry = {"epoch": epoch + 1, "loss": _mean_over_processes(float(np.mean(losses)), context),
                 "lr": lr, "tau": tau}
        if context.is_main:
            entry |= _collapse_guards(model, knn_train, knn_val, config.knn_k, device)
            entry["encoder_change"] = metrics.relative_change(model.encoder, initial_encoder)
            history.append(entry)
            _save_checkpoint(path, {
                models.BYOL_ENCODER_KEY: model.encoder.state_dict(),
                "byol": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "global_step": step,
                "history": history,
                "config": asdict(config),
                "provenance": provenance,
                "unreadable_samples": unreadable.reasons,
                "rng": _rng_state(loader.generator),
            })
        else:
            history.append(entry)
        distributed.barrier(context)
    if context.is_main and history and history[-1]["encoder_change"] < metrics.MIN_ENCODER_CHANGE:
        log.warning(
            "the encoder's weights moved only %.1f %% from their random initialisation in %d "
            "steps: its features are close to random ones. Raise base_lr or lars_trust, or "
            "train longer.", 100 * history[-1]["encoder_change"], step,
        )
    return history


def _collapse_guards(
    model: byol.BYOL, knn_train: DataLoader, knn_val: DataLoader, k: int, device: torch.device
) -> dict:
    """Projection std and kNN accuracy of the online network on labelled sites (rank 0 only)."""
    train_x, train_y, _ = _features(model.encoder, knn_train, device)
    val_x, val_y, _ = _features(model.encoder, knn_val, device)
    train_x, val_x = train_x[:, 0], val_x[:, 0]
    model.projector.eval()
    with torch.no_grad():
        z = model.projector(val_x.to(device))
    model.projector.train()
    return {
        "projection_std": metrics.projection_std(z),
        "knn_accuracy": metrics.knn_accuracy(train_x, train_y, val_x, val_y, k),
    }


def encoder_features(
    checkpoint: str | Path,
    arch: str,
    corpus_root: str | Path,
    index: pd.DataFrame,
    band_stats: BandStats,
    batch_size: int = 64,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) of a pretrained BYOL encoder and class ids (N,) of `index` sites.

    Each site is read at one date, fixed per site and spread over the year, as in the kNN
    guard of `pretrain` (not all at their first, winter date).
    """
    device = distributed.device(distributed.Context())
    encoder = _accelerate(
        models.build_model(arch, 4, 0, f"byol:{checkpoint}"), device, distributed.Context()
    )
    dataset = open_dataset(corpus_root, index, band_stats, date_sampling="spread",
                           raw=_raw_batches(device))
    loader = _loader(dataset, batch_size, 0, shuffle=False, num_workers=num_workers)
    features, class_ids, _ = _features(encoder, loader, device)
    return features[:, 0].numpy(), class_ids.numpy()


def _byol_views(
    batch: dict, config: PretrainConfig, generator: torch.Generator, device: torch.device,
    dataset: Dataset,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented views of a batch: of one image, or of two dates (temporal)."""
    image = _to_device(batch["image"], device, dataset)
    temporal = config.positives == "temporal"
    image2 = _to_device(batch["image2"], device, dataset) if temporal else image
    first, second = augment.byol_view_configs(config.colour_jitter)
    return (
        augment.augment(image, first, generator, config.image_size),
        augment.augment(image2, second, generator, config.image_size),
    )


# --------------------------------------------------------------------------- fine-tuning

EVAL_DATES = ("seasons", "all", "spread", "first")


@dataclass(frozen=True)
class FinetuneConfig:
    """Parameters of one fine-tuning run (the poster's scenarios are inits x label fractions)."""

    arch: str = "resnet50"
    init: str = "random"  # "random", "imagenet" or "byol:<checkpoint path>"
    imagenet_weights_path: str | None = None  # local torchvision state dict (offline clusters)
    label_fraction: float = 1.0  # share of the training sites whose labels are used
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9); cosine decay per step
    seed: int = 0
    linear_probe: bool = False  # True: frozen encoder, only the head trains
    num_workers: int = 0  # DataLoader worker processes (per training process)
    pin_memory: bool = True  # page-locked batches for faster host-to-GPU copies (CUDA only)
    prefetch_factor: int = 2  # batches each worker loads ahead
    augment: bool = True  # random flips and quarter turns of training chips
    # An epoch is one pass over the labelled sites, but at least this many samples (whole
    # passes repeated, single process only): tiny label shares of a small corpus would
    # otherwise get a handful of optimizer steps (the poster's 1 % was ~3,750 sites).
    min_samples_per_epoch: int = 0
    # Dates at which validation and test sites are classified: "seasons" (one per season, a
    # soft vote over them), "all" (every monthly date, voted), "spread" (one per site, spread
    # over the year) or "first" (each site's first date: early January, what runs did before).
    eval_dates: str = "seasons"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.eval_dates not in EVAL_DATES:
            raise ValueError(f"eval_dates must be one of {EVAL_DATES}, got {self.eval_dates!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


def results_name(config: FinetuneConfig) -> str:
    """Results file name from the run's parameters, e.g. finetune_init-byol_frac-0.01_seed-0.json.

    A BYOL init is named "byol" whatever its checkpoint path.
    """
    init = "byol" if config.init.startswith("byol:") else config.init
    probe = "_linear" if config.linear_probe else ""
    return f"finetune_init-{init}_frac-{config.label_fraction:g}{probe}_seed-{config.seed}.json"


def finetune_provenance(
    config: FinetuneConfig, train_index: pd.DataFrame, val_index: pd.DataFrame,
    test_index: pd.DataFrame, band_stats: BandStats,
) -> dict[str, str | None]:
    """What a fine-tuning result depends on beyond its parameters: the split (fingerprint of
    train, val and test), the normalisation, and the BYOL checkpoint's content (sha256)."""
    parts = [(train_index, "train"), (val_index, "val"), (test_index, "test")]
    # built from plain arrays: concatenating the index frames would compare their attrs
    everything = pd.DataFrame({"sample_id": np.concatenate(
        [index["sample_id"].to_numpy() for index, _ in parts])})
    names = pd.Series([name for index, name in parts for _ in range(len(index))])
    checkpoint = (Path(config.init.removeprefix("byol:")) if config.init.startswith("byol:")
                  else None)
    return {
        "split_fingerprint": splits.fingerprint(everything, names),
        "band_stats_fingerprint": band_stats.fingerprint(),
        "init_checkpoint_sha256": (file_sha256(checkpoint) if checkpoint and checkpoint.is_file()
                                   else None),
    }


def stale_reasons(results: dict, config: FinetuneConfig, provenance: dict) -> list[str]:
    """Why a results file does not hold the run `config` and `provenance` describe (empty when
    it does): changed parameters, another split, normalisation or BYOL checkpoint."""
    reasons = []
    changed = _changed_fields(config, results.get("parameters"))
    if changed:
        reasons.append(f"parameters changed: {', '.join(changed)}")
    recorded = results.get("provenance") or {}
    for key, what in (("split_fingerprint", "another split"),
                      ("band_stats_fingerprint", "other band statistics"),
                      ("init_checkpoint_sha256", "another BYOL checkpoint")):
        if recorded.get(key) != provenance[key]:
            reasons.append(f"{what} ({key} {recorded.get(key)} vs now {provenance[key]})"
                           if recorded else "written before provenance was recorded")
    return list(dict.fromkeys(reasons))


def check_checkpoint_provenance(path: Path, provenance: dict, check_split: bool = True) -> None:
    """Refuse a BYOL checkpoint pretrained on another split (unless not `check_split`) or
    with other band statistics.

    Its encoder would have seen this split's validation or test sites, or expect another
    normalisation. A checkpoint older than provenance records is used with a warning.
    """
    if not path.is_file():
        return  # models.build_model reports the missing file with its fix
    recorded = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(
        "provenance")
    if not recorded:
        log.warning("%s records no split or band statistics fingerprint: cannot check that it "
                    "was pretrained on this split", path)
        return
    checked = (("split_fingerprint", "split"),) if check_split else ()
    for key, what in (*checked, ("band_stats_fingerprint", "band statistics")):
        if recorded.get(key) and recorded[key] != provenance[key]:
            raise ValueError(
                f"{path} was pretrained with another {what} ({key} {recorded[key]}, this run "
                f"{provenance[key]}): its encoder may have seen this run's validation or test "
                "sites, or expects another normalisation. Pretrain again on this split (same "
                "split_by, split_seed and corpus, band_stats.json of this split), or point "
                "byol_checkpoint to a checkpoint of this split"
            )


def _git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "rapid_utils": rapid_utils.__version__,
    }


def _trainable(model: nn.Module, linear_probe: bool) -> Iterator[nn.Parameter]:
    """Parameters to optimise; in a linear probe only the head's (the rest is frozen)."""
    if linear_probe:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("fc."))
    return (param for param in model.parameters() if param.requires_grad)


def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
              unreadable: UnreadableLog | None = None) -> dict:
    """Per-site predictions (a soft vote over the site's evaluation dates) and accuracy per date.

    Returns `y_true`, `y_pred` (one per site) and `per_date` ({ISO date: accuracy of the
    single-date predictions at that date}).
    """
    logits, labels, dates = _features(model, loader, device, unreadable)
    voted = logits.softmax(dim=-1).mean(dim=1).argmax(dim=1)
    correct = (logits.argmax(dim=-1) == labels[:, None]).numpy()
    per_date = pd.Series(correct.ravel()).groupby(np.ravel(dates)).mean()
    return {"y_true": labels.tolist(), "y_pred": voted.tolist(),
            "per_date": {str(date): float(acc) for date, acc in per_date.items()}}


def finetune(
    config: FinetuneConfig,
    corpus_root: str | Path,
    train_index: pd.DataFrame,
    val_index: pd.DataFrame,
    test_index: pd.DataFrame,
    band_stats: BandStats,
    results_path: str | Path,
    force: bool = False,
    progress: bool = True,
    class_names: Sequence[str] = labels.CLASSES,
    replace_stale: bool = False,
    check_pretraining_split: bool = True,
    model_dir: str | Path | None = None,
) -> dict:
    """Fine-tune a classifier of `class_names` and write its results file; return the results.

    `class_names` are the classes the index's `label` numbers: the poster's 7 by default, a
    chips corpus's own (`Study.class_names`) otherwise; the results file records them.

    Trains on `config.label_fraction` of `train_index` (stratified, seeded), one random date
    per site and epoch; evaluates val and test at `config.eval_dates` after every epoch.
    The results file records the split's and the band statistics' fingerprints and the BYOL
    checkpoint's content hash (`provenance`); a BYOL checkpoint pretrained on another split or
    normalisation is refused, unless `check_pretraining_split` is False (a study that
    pretrains on every image by design, `label_efficiency`; band statistics are checked
    still). An existing complete results file with the same parameters and provenance is
    returned as it is unless `force`; one with others is refused, or replaced when
    `replace_stale`.

    With `model_dir`, the trained classifier is written there too (`models.save_classifier`:
    weights plus its normalisation, classes and provenance; `models.load_pretrained` reads
    it), and the results file names it. Every results file records the input's
    `normalisation` (bands, scale, per-band mean and std, input size, pixel size).
    """
    results_path = Path(results_path)
    provenance = finetune_provenance(config, train_index, val_index, test_index, band_stats)
    if results_path.is_file() and not force:
        existing = json.loads(results_path.read_text())
        if existing.get("complete"):
            stale = stale_reasons(existing, config, provenance)
            if stale and replace_stale:
                log.info("replacing %s: %s", results_path, "; ".join(stale))
            elif stale:
                raise ValueError(
                    f"{results_path} holds a run that differs ({'; '.join(stale)}); "
                    "pass force=True to replace it or choose another results path"
                )
            else:
                if model_dir is not None and not existing.get("model"):
                    log.warning("%s was written without its model's weights; pass force=True to "
                                "train again and save them to %s", results_path, model_dir)
                return existing

    if (train_index["label"] < 0).any():
        raise ValueError("fine-tuning needs labelled training sites, and train_index holds "
                         "unlabelled ones (label -1): pass Study.sites('train'), not "
                         "Study.pretraining_sites()")
    context = distributed.setup()
    device = distributed.device(context)
    seed_everything(config.seed)
    if config.batch_size % context.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} (global) must divide by the {context.world_size} "
            "processes"
        )
    if config.init.startswith("byol:"):
        check_checkpoint_provenance(Path(config.init.removeprefix("byol:")), provenance,
                                    check_split=check_pretraining_split)
    # Built first so missing ImageNet or BYOL weights stop the run before any data is read.
    model = models.build_model(config.arch, 4, len(class_names), config.init,
                               config.imagenet_weights_path)
    model = _accelerate(model, device, context)
    labelled = splits.label_fraction(train_index, config.label_fraction, config.seed)
    loading = {k: getattr(config, k) for k in LOADER_FIELDS}

    raw = _raw_batches(device)
    train_set = open_dataset(corpus_root, labelled, band_stats, date_sampling="random", raw=raw)
    local_batch = config.batch_size // context.world_size
    # A last batch of one sample breaks BatchNorm in train mode; drop it in that case only.
    # Several processes always drop the ragged end (DistributedSampler would pad it).
    min_samples = 0 if context.active else config.min_samples_per_epoch
    drop_last = context.active or max(len(train_set), min_samples) % local_batch == 1

    def train_loader(epoch: int) -> DataLoader:
        return _loader(train_set, local_batch, config.seed + epoch, shuffle=True,
                       drop_last=drop_last, context=context,
                       samples_per_epoch=min_samples, **loading)

    eval_loaders = {
        name: _loader(
            open_dataset(corpus_root, index, band_stats, date_sampling=config.eval_dates,
                         raw=raw),
            config.batch_size, config.seed, shuffle=False, **loading,
        )
        for name, index in (("val", val_index), ("test", test_index))
    }

    params = list(_trainable(model, config.linear_probe))
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs * len(train_loader(0)))
    )
    trainer = _wrap(model, device, context)

    per_epoch: dict[str, list[float]] = {
        "train_loss": [], "val_accuracy": [], "test_accuracy": [], "lr": []
    }
    evaluations: dict[str, dict] = {}
    unreadable = UnreadableLog(context=context)
    for epoch in range(config.epochs):
        flips = _augment_generator(config.seed + epoch + 100_003 * context.rank, device)
        # A linear probe keeps the encoder in eval mode so its BatchNorm statistics stay fixed.
        model.train(not config.linear_probe)
        per_epoch["lr"].append(scheduler.get_last_lr()[0])
        losses = []
        for batch in tqdm(train_loader(epoch), desc=f"fine-tune epoch {epoch + 1}/{config.epochs}",
                          disable=not (progress and context.is_main), leave=False):
            unreadable.note(batch)
            image = _to_device(batch["image"], device, train_set)
            if config.augment:
                image = augment.augment(image, FINETUNE_VIEW, flips)
            with _autocast(device):
                loss = F.cross_entropy(trainer(image).float(), batch["label"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        unreadable.check()
        per_epoch["train_loss"].append(_mean_over_processes(float(np.mean(losses)), context))
        if context.is_main:  # evaluation and results are rank 0's alone
            for name, eval_loader in eval_loaders.items():
                evaluations[name] = _evaluate(model, eval_loader, device, unreadable)
                y_true, y_pred = evaluations[name]["y_true"], evaluations[name]["y_pred"]
                per_epoch[f"{name}_accuracy"].append(float(np.mean(np.equal(y_true, y_pred))))
        distributed.barrier(context)

    unreadable.check()  # the last epoch's evaluation reads too
    if context.is_main:
        normalisation = models.Normalisation(
            tuple(layout.BANDS), layout.REFLECTANCE_SCALE, band_stats.mean, band_stats.std,
            int(train_set[0]["image"].shape[-1]), train_set.gsd_m)
        saved = None
        if model_dir is not None:
            description = models.save_classifier(
                model, model_dir, config.arch, class_names, normalisation,
                provenance | {"results_file": results_path.name, "parameters": asdict(config),
                              "git_commit": _git_commit()})
            saved = {"path": str(Path(model_dir).resolve()),
                     "weights_sha256": json.loads(description.read_text())["weights_sha256"]}
        write_json_atomic(results_path, {
            "parameters": asdict(config) | {
                "n_train": len(train_index),
                "n_labelled": len(labelled),
                "n_val": len(val_index),
                "n_test": len(test_index),
                "world_size": context.world_size,
            },
            "seed": config.seed,
            "device": str(device),
            "per_epoch": per_epoch,
            "final": {
                name: metrics.classification_metrics(
                    evaluations[name]["y_true"], evaluations[name]["y_pred"],
                    class_names=class_names)
                for name in ("test", "val")
            },
            # accuracy of the last epoch's single-date predictions, at each evaluation date
            "per_date_accuracy": {name: evaluations[name]["per_date"] for name in ("test", "val")},
            "provenance": provenance,
            "normalisation": normalisation.describe(),
            "model": saved,  # the fine-tuned weights' folder, when saved
            "unreadable_samples": unreadable.reasons,  # replaced by other samples, with why
            "classes": list(class_names),
            "versions": _versions(),
            "git_commit": _git_commit(),
            "complete": True,
        })
    distributed.barrier(context)
    return json.loads(results_path.read_text())
