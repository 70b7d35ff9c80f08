"""BYOL pretraining: checkpointed, resumable, with per-epoch collapse guards (kNN accuracy,
projection spread, encoder change), data-parallel under torchrun."""

from __future__ import annotations

import logging
import math
import pickle
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rapid_utils import augment, byol, distributed, evaluation, metrics, models, paths, splits
from rapid_utils.corpus import layout
from rapid_utils.datasets import BandStats, open_dataset
from rapid_utils.io import atomic_path, replace_keeping_previous
from rapid_utils.progress import gist, report_progress
from rapid_utils.train.runtime import (
    LOADER_FIELDS,
    UnreadableLog,
    accelerate,
    augment_generator,
    autocast,
    changed_fields,
    make_loader,
    mean_over_processes,
    raw_batches,
    seed_everything,
    to_device,
    wrap_ddp,
)

log = logging.getLogger(__name__)

CHECKPOINT_FILE = paths.CHECKPOINT_FILE

@dataclass(frozen=True)
class PretrainConfig:
    """Parameters of a BYOL pretraining run (all of them are stored in the checkpoint)."""

    arch: str = "resnet50"
    # models.STEMS: "imagenet" (7x7 stride 2 + max-pool: 32 px views -> 8 x 8 after the stem),
    # "small" (3x3 stride 1, no max-pool) or "small-stride2" (3x3 stride 2) for small views
    stem: str = "imagenet"
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
    # "per-band" (BYOL) or "shared": one brightness factor on the raw reflectance of all bands
    # (band ratios kept) and one contrast factor for all bands (augment.ViewConfig)
    jitter_bands: str = "per-band"
    blur: bool = True  # Gaussian blur of the views (BYOL's); False: neither view is blurred
    view_noise: float = 0.0  # std of additive Gaussian noise on the views, normalised units
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
    knn_k: int = 5  # the kNN of notebook 06 (evaluation.KNN_K[0])

    def __post_init__(self) -> None:
        if self.positives not in ("augment", "temporal"):
            raise ValueError(f"positives must be 'augment' or 'temporal', got {self.positives!r}")
        if self.optimizer not in ("lars", "sgd"):
            raise ValueError(f"optimizer must be 'lars' or 'sgd', got {self.optimizer!r}")
        augment.byol_view_configs(self.colour_jitter)  # a bad strength fails here, named
        if self.jitter_bands not in augment.JITTER_BANDS:
            raise ValueError(f"jitter_bands must be one of {augment.JITTER_BANDS}, got "
                             f"{self.jitter_bands!r}")
        if not isinstance(self.blur, bool):
            raise ValueError(f"blur must be True or False, got {self.blur!r}")
        if not (isinstance(self.view_noise, int | float) and 0 <= self.view_noise < math.inf):
            raise ValueError(f"view_noise must be a finite number >= 0, got {self.view_noise!r}")
        if self.stem not in models.STEMS:
            raise ValueError(f"stem must be one of {models.STEMS}, got {self.stem!r}")


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
        changed = changed_fields(config, checkpoint.get("config"))
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
    guard_index: pd.DataFrame | None = None,
) -> list[dict]:
    """Pretrain a BYOL encoder on `train_index` sites; return the per-epoch history.

    `train_index` may hold unlabelled sites (label -1); they are left out of the kNN guard,
    which trains on `guard_index` (labelled training sites) when given, else on the labelled
    sites of `train_index` (a pool of unlabelled images alone needs `guard_index`).

    Each epoch logs `loss`, `projection_std` and `knn_accuracy` (collapse guards, on up to
    `knn_sites` labelled train and val sites, each at one date fixed per site; the kNN is
    notebook 06's, `evaluation.knn_name(knn_k)`),
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

    encoder = models.build_model(config.arch, in_channels=4, num_classes=0, stem=config.stem)
    model = byol.BYOL(
        encoder, models.feature_dim(encoder), config.hidden_dim, config.projection_dim
    )
    initial_encoder = metrics.weight_snapshot(model.encoder)
    model = accelerate(model, device, context)
    optimizer = _build_optimizer(model, config)

    sampling = "pair" if config.positives == "temporal" else "random"
    raw = raw_batches(device)
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

    labelled_train = train_index if guard_index is None else guard_index
    labelled_train = labelled_train[labelled_train["label"] >= 0]  # unlabelled: label -1
    knn_train, knn_val = (
        make_loader(
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
    trainer = wrap_ddp(model, device, context)

    loader = make_loader(dataset, local_batch, config.seed, shuffle=True, drop_last=True,
                         context=context, **loading)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        loader.sampler.set_epoch(epoch)
        # Each process draws its own views; rank 0 matches a single-process run.
        views_rng = augment_generator(config.seed + epoch + 100_003 * context.rank, device)
        model.train()
        loss_sum, steps = torch.zeros((), dtype=torch.float64, device=device), 0
        for batch in tqdm(loader, desc=f"BYOL epoch {epoch + 1}/{config.epochs}",
                          disable=not (progress and context.is_main), leave=False):
            unreadable.note(batch)
            view1, view2 = _byol_views(batch, config, views_rng, device, dataset, band_stats)
            lr = byol.lr_schedule(
                step, total_steps, config.base_lr, config.batch_size, warmup_steps
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device):
                loss = trainer(view1, view2).float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tau = byol.tau_schedule(step, total_steps, config.tau_base)
            model.update_target(tau)  # identical on every process: same online weights
            step += 1
            loss_sum += loss.detach()  # summed on the device: no host sync per step
            steps += 1

        unreadable.check()
        entry = {"epoch": epoch + 1, "loss": mean_over_processes(loss_sum.item() / steps, context),
                 "lr": lr, "tau": tau}
        if context.is_main:
            entry |= _collapse_guards(model, knn_train, knn_val, config.knn_k, device)
            entry["encoder_change"] = metrics.relative_change(model.encoder, initial_encoder)
            history.append(entry)
            report_progress(f"BYOL epoch {epoch + 1}/{config.epochs}: loss {entry['loss']:.3f}, "
                            f"kNN accuracy {entry['knn_accuracy']:.1%}, "
                            f"{time.perf_counter() - started:.0f} s")
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
    """Projection std and kNN accuracy of the online network on labelled sites (rank 0 only).

    The kNN is notebook 06's (`evaluation.knn_predict`, named `evaluation.knn_name(k)`).
    """
    online = {"online": model.encoder}
    train_x, train_y = evaluation.extract_features(online, knn_train, device)
    val_x, val_y = evaluation.extract_features(online, knn_val, device)
    model.projector.eval()
    with torch.no_grad():
        z = model.projector(torch.from_numpy(val_x["online"]).to(device))
    model.projector.train()
    predicted = evaluation.knn_predict(train_x["online"], train_y, val_x["online"], k)
    return {
        "projection_std": metrics.projection_std(z),
        "knn_accuracy": evaluation.score(val_y, predicted)[0],
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
    """Features (N, D) of a pretrained BYOL encoder (rebuilt with the stem its checkpoint
    records) and class ids (N,) of `index` sites.

    Each site is read at one date, fixed per site and spread over the year, as in the kNN
    guard of `pretrain` (not all at their first, winter date).
    """
    device = distributed.device(distributed.Context())
    encoder = accelerate(
        models.build_model(arch, 4, 0, f"byol:{checkpoint}"), device, distributed.Context()
    )
    dataset = open_dataset(corpus_root, index, band_stats, date_sampling="spread",
                           raw=raw_batches(device))
    loader = make_loader(dataset, batch_size, 0, shuffle=False, num_workers=num_workers)
    features, class_ids = evaluation.extract_features({"byol": encoder}, loader, device)
    return features["byol"], class_ids


def _byol_views(
    batch: dict, config: PretrainConfig, generator: torch.Generator, device: torch.device,
    dataset: Dataset, band_stats: BandStats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented views of a batch (`augment.byol_views`): of one image, or of two
    dates (temporal).

    Shared jitter scales raw reflectance, so it needs the `band_stats` the batch was
    normalised with (a chips corpus normalised per source: the labelled chips' statistics,
    so for other sources' chips the factor is not exactly one on raw values).
    """
    image = to_device(batch["image"], device, dataset)
    temporal = config.positives == "temporal"
    image2 = to_device(batch["image2"], device, dataset) if temporal else None
    normalisation = None if band_stats is None else (band_stats.mean, band_stats.std)
    return augment.byol_views(image, generator, config.image_size, config.colour_jitter,
                              second=image2, jitter_bands=config.jitter_bands,
                              blur=config.blur, noise=config.view_noise,
                              normalisation=normalisation)
