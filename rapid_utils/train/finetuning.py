"""Land-cover fine-tuning: one results file per run, with provenance, reuse and staleness
checks, and the classifier saved as self-describing weights."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from rapid_utils import augment, distributed, labels, metrics, models, results, splits
from rapid_utils.corpus import layout
from rapid_utils.datasets import BandStats, open_dataset
from rapid_utils.io import file_sha256
from rapid_utils.progress import report_progress
from rapid_utils.provenance import git_commit, machine, versions
from rapid_utils.train.runtime import (
    LOADER_FIELDS,
    UnreadableLog,
    accelerate,
    augment_generator,
    autocast,
    changed_fields,
    make_loader,
    mean_over_processes,
    model_outputs,
    raw_batches,
    seed_everything,
    to_device,
    wrap_ddp,
)

log = logging.getLogger(__name__)

FINETUNE_VIEW = augment.ViewConfig(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.0, blur_p=0.0
)
"""Fine-tuning augmentation: random flips and quarter turns only (land cover has no 'up')."""


EVAL_DATES = ("seasons", "all", "spread", "first")


@dataclass(frozen=True)
class FinetuneConfig:
    """Parameters of one fine-tuning run (the poster's scenarios are inits x label fractions)."""

    arch: str = "resnet50"
    init: str = "random"  # "random", "imagenet" or "byol:<checkpoint path>"
    # models.STEMS; init "imagenet" needs "imagenet", a BYOL init its checkpoint's stem
    stem: str = "imagenet"
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
    # over the year) or "first" (each site's first date: early January, the cheapest).
    eval_dates: str = "seasons"
    # Test sites are classified after the last epoch only (validation after every epoch): at
    # poster scale, 75,000 test sites at four dates an epoch cost a long evaluation. True adds
    # the test accuracy of every epoch (the poster's Fig. 4 curves).
    test_every_epoch: bool = False
    # False: validation sites too are classified after the last epoch only (where they are the
    # test sites, as in the label-efficiency study's test protocol, a curve is not to be read)
    val_every_epoch: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.eval_dates not in EVAL_DATES:
            raise ValueError(f"eval_dates must be one of {EVAL_DATES}, got {self.eval_dates!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.stem not in models.STEMS:
            raise ValueError(f"stem must be one of {models.STEMS}, got {self.stem!r}")
        if self.init == "imagenet" and self.stem != "imagenet":
            raise ValueError(f"init 'imagenet' needs stem 'imagenet' (ImageNet's filters fit no "
                             f"other), got {self.stem!r}")


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


def stale_reasons(existing: results.RunResult | Mapping, config: FinetuneConfig,
                  provenance: dict) -> list[str]:
    """Why a run (a `RunResult` or a results file's content) is not the run `config` and
    `provenance` describe (empty when it is): changed parameters, another split,
    normalisation or BYOL checkpoint."""
    run = results.as_run(existing)
    reasons = []
    changed = changed_fields(config, run.parameters)
    if changed:
        reasons.append(f"parameters changed: {', '.join(changed)}")
    recorded = run.provenance or {}
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


def _trainable(model: nn.Module, linear_probe: bool) -> Iterator[nn.Parameter]:
    """Parameters to optimise; in a linear probe only the head's (the rest is frozen)."""
    if linear_probe:
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith("fc."))
    return (param for param in model.parameters() if param.requires_grad)


def _build_optimizer(params: Sequence[nn.Parameter],
                     config: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) over `params`, with torch's fused kernels.

    Fused: one pass over each parameter tensor (CPU and CUDA) instead of the for-loop's dozen
    elementwise operations. On a 2-core CPU the for-loop AdamW step was a quarter to a third of a
    ResNet-18 fine-tuning step (`benchmarks/optimizer_step.py`). The update rule is the same;
    float rounding differs, so the two do not give bit-identical weights.
    """
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                 fused=True)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9,
                           weight_decay=config.weight_decay, fused=True)


def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device,
              unreadable: UnreadableLog | None = None,
              context: distributed.Context | None = None) -> dict:
    """Per-site predictions (a soft vote over the site's evaluation dates) and accuracy per date.

    Returns `y_true`, `y_pred` (one per site) and `per_date` ({ISO date: accuracy of the
    single-date predictions at that date}). Under torchrun each process classifies its shard
    (`_eval_shard`: every world_size-th site from its rank on) and every process returns the
    whole split's predictions, in the split's order.
    """
    logits, labels, dates = model_outputs(model, loader, device, unreadable)
    voted = logits.softmax(dim=-1).mean(dim=1).argmax(dim=1)
    correct = (logits.argmax(dim=-1) == labels[:, None]).tolist()
    shards = distributed.gather_objects(
        {"y_true": labels.tolist(), "y_pred": voted.tolist(), "correct": correct,
         "dates": dates}, context or distributed.Context())
    # shard k holds sites k, k + world, k + 2 world, ...: interleave them back into order
    order = [(shard, position) for position in range(max(len(s["y_true"]) for s in shards))
             for shard in range(len(shards)) if position < len(shards[shard]["y_true"])]
    y_true, y_pred, flat_correct, flat_dates = [], [], [], []
    for shard, position in order:
        part = shards[shard]
        y_true.append(part["y_true"][position])
        y_pred.append(part["y_pred"][position])
        flat_correct += part["correct"][position]
        flat_dates += part["dates"][position]
    per_date = pd.Series(flat_correct, dtype=float).groupby(flat_dates).mean()
    return {"y_true": y_true, "y_pred": y_pred,
            "per_date": {str(date): float(acc) for date, acc in per_date.items()}}


def _eval_shard(index: pd.DataFrame, context: distributed.Context) -> pd.DataFrame:
    """This process's share of an evaluation split: every world_size-th site from its rank."""
    return index.iloc[context.rank::context.world_size]


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
    """Fine-tune a classifier of `class_names` and write its results file (`results.RunResult`);
    return the file's content.

    `class_names` are the classes the index's `label` numbers: the poster's 7 by default, a
    chips corpus's own (`Study.class_names`) otherwise; the results file records them.

    Trains on `config.label_fraction` of `train_index` (stratified, seeded), one random date
    per site and epoch; evaluates val and test at `config.eval_dates` after the last epoch
    (and after every epoch, as `config.val_every_epoch` and `test_every_epoch` say).
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
    if not force:
        existing = _reusable(results_path, config, provenance, replace_stale, model_dir)
        if existing is not None:
            return existing.to_json()
    run = _setup(config, corpus_root, train_index, val_index, test_index, band_stats,
                 class_names, provenance, check_pretraining_split)
    per_epoch, evaluations, unreadable = _train(run, config, progress)
    if run.context.is_main:
        _write(run, config, results_path, per_epoch, evaluations, unreadable, model_dir,
               (train_index, val_index, test_index), band_stats, class_names, provenance)
    distributed.barrier(run.context)
    return results.read_run(results_path).to_json()


def _reusable(results_path: Path, config: FinetuneConfig, provenance: dict,
              replace_stale: bool, model_dir: str | Path | None) -> results.RunResult | None:
    """The complete run in `results_path` when it is the one `config` and `provenance`
    describe; None when there is none, an incomplete one, or a stale one that `replace_stale`
    lets go.

    Raises ValueError for a stale one otherwise, `results.ResultsFileError` for a file that is
    no results file.
    """
    if not results_path.is_file():
        return None
    try:
        existing = results.read_run(results_path)
    except results.IncompleteRunError:
        return None  # the run writes it afresh
    stale = stale_reasons(existing, config, provenance)
    if stale and replace_stale:
        log.info("replacing %s: %s", results_path, "; ".join(stale))
        return None
    if stale:
        raise ValueError(
            f"{results_path} holds a run that differs ({'; '.join(stale)}); "
            "pass force=True to replace it or choose another results path"
        )
    if model_dir is not None and not existing.model:
        log.warning("%s was written without its model's weights; pass force=True to "
                    "train again and save them to %s", results_path, model_dir)
    return existing


@dataclass(frozen=True)
class _Run:
    """What a fine-tuning run trains with, built by `_setup`."""

    context: distributed.Context
    device: torch.device
    model: nn.Module  # on the device; evaluated and saved
    trainer: nn.Module  # `model`, wrapped for DistributedDataParallel under torchrun
    labelled: pd.DataFrame  # the training sites whose labels are used
    train_set: Dataset
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]  # "val" and "test": this process's shard
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def _setup(config: FinetuneConfig, corpus_root: str | Path, train_index: pd.DataFrame,
           val_index: pd.DataFrame, test_index: pd.DataFrame, band_stats: BandStats,
           class_names: Sequence[str], provenance: dict, check_pretraining_split: bool) -> _Run:
    """Check the inputs, seed, and build the model, loaders, optimizer and schedule.

    The order of these steps fixes what the seed draws: keep it.
    """
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
    # A BYOL init's stem must be its checkpoint's (build_model refuses another), so that the
    # results file's parameters name the network that was trained.
    model = models.build_model(config.arch, 4, len(class_names), config.init,
                               config.imagenet_weights_path, stem=config.stem)
    model = accelerate(model, device, context)
    labelled = splits.label_fraction(train_index, config.label_fraction, config.seed)
    loading = {k: getattr(config, k) for k in LOADER_FIELDS}

    raw = raw_batches(device)
    train_set = open_dataset(corpus_root, labelled, band_stats, date_sampling="random", raw=raw)
    local_batch = config.batch_size // context.world_size
    # A last batch of one sample breaks BatchNorm in train mode; drop it in that case only.
    # Several processes always drop the ragged end (DistributedSampler would pad it).
    # `min_samples_per_epoch` repeats a small label share under torchrun too: the epoch's
    # order is drawn once and shared out (`EpochSampler`), so each process gets its part.
    min_samples = config.min_samples_per_epoch
    drop_last = context.active or max(len(train_set), min_samples) % local_batch == 1

    train_loader = make_loader(train_set, local_batch, config.seed, shuffle=True,
                               drop_last=drop_last, context=context,
                               samples_per_epoch=min_samples, **loading)
    if len(train_loader) == 0:
        raise ValueError(
            f"label_fraction {config.label_fraction} gives {len(labelled)} training sites, "
            f"fewer than one batch of {local_batch} in each of the {context.world_size} "
            "processes: raise min_samples_per_epoch (repeats them) or lower batch_size")

    eval_loaders = {
        name: make_loader(
            open_dataset(corpus_root, _eval_shard(index, context), band_stats,
                         date_sampling=config.eval_dates, raw=raw),
            config.batch_size, config.seed, shuffle=False, **loading,
        )
        for name, index in (("val", val_index), ("test", test_index))
    }

    optimizer = _build_optimizer(list(_trainable(model, config.linear_probe)), config)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, config.epochs * len(train_loader))
    )
    trainer = wrap_ddp(model, device, context)
    return _Run(context, device, model, trainer, labelled, train_set, train_loader,
                eval_loaders, optimizer, scheduler)


def _train(run: _Run, config: FinetuneConfig, progress: bool
           ) -> tuple[dict[str, list[float | None]], dict[str, dict], UnreadableLog]:
    """Train every epoch, evaluating after each; return the per-epoch curves, the last
    evaluation of each split (`_evaluate`) and the unreadable samples met."""
    per_epoch: dict[str, list[float | None]] = {
        "train_loss": [], "val_accuracy": [], "test_accuracy": [], "lr": []
    }
    evaluations: dict[str, dict] = {}
    unreadable = UnreadableLog(context=run.context)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        per_epoch["lr"].append(run.scheduler.get_last_lr()[0])
        loss = _train_epoch(run, config, epoch, unreadable, progress)
        per_epoch["train_loss"].append(mean_over_processes(loss, run.context))
        last = epoch == config.epochs - 1
        distributed.broadcast_buffers(run.model, run.context)  # one model evaluates, in shards
        # every process classifies its shard of the evaluation sites
        every_epoch = {"val": config.val_every_epoch, "test": config.test_every_epoch}
        for name, eval_loader in run.eval_loaders.items():
            if not (last or every_epoch[name]):
                per_epoch[f"{name}_accuracy"].append(None)  # JSON null: not evaluated
                continue
            evaluations[name] = _evaluate(run.model, eval_loader, run.device, unreadable,
                                          run.context)
            y_true, y_pred = evaluations[name]["y_true"], evaluations[name]["y_pred"]
            per_epoch[f"{name}_accuracy"].append(float(np.mean(np.equal(y_true, y_pred))))
        if run.context.is_main:
            val = per_epoch["val_accuracy"][-1]
            report_progress(f"fine-tune epoch {epoch + 1}/{config.epochs}: loss "
                            f"{per_epoch['train_loss'][-1]:.3f}, validation accuracy "
                            f"{'not evaluated' if val is None else f'{val:.1%}'}, "
                            f"{time.perf_counter() - started:.0f} s")
        distributed.barrier(run.context)
    unreadable.check()  # the last epoch's evaluation reads too
    return per_epoch, evaluations, unreadable


def _train_epoch(run: _Run, config: FinetuneConfig, epoch: int, unreadable: UnreadableLog,
                 progress: bool) -> float:
    """One pass over the training loader; the mean loss of this process's steps."""
    flips = augment_generator(config.seed + epoch + 100_003 * run.context.rank, run.device)
    # A linear probe keeps the encoder in eval mode so its BatchNorm statistics stay fixed.
    run.model.train(not config.linear_probe)
    loss_sum, steps = torch.zeros((), dtype=torch.float64, device=run.device), 0
    run.train_loader.sampler.set_epoch(epoch)
    for batch in tqdm(run.train_loader, desc=f"fine-tune epoch {epoch + 1}/{config.epochs}",
                      disable=not (progress and run.context.is_main), leave=False):
        unreadable.note(batch)
        image = to_device(batch["image"], run.device, run.train_set)
        if config.augment:
            image = augment.augment(image, FINETUNE_VIEW, flips)
        with autocast(run.device):
            loss = F.cross_entropy(run.trainer(image).float(), batch["label"].to(run.device))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += loss.detach()  # summed on the device: no host sync per step
        steps += 1
    unreadable.check()
    return loss_sum.item() / steps


def _write(run: _Run, config: FinetuneConfig, results_path: Path,
           per_epoch: dict[str, list[float | None]], evaluations: dict[str, dict],
           unreadable: UnreadableLog, model_dir: str | Path | None,
           indexes: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], band_stats: BandStats,
           class_names: Sequence[str], provenance: dict) -> None:
    """Save the classifier (with `model_dir`) and write the results file (rank 0 only)."""
    train_index, val_index, test_index = indexes
    normalisation = models.Normalisation(
        tuple(layout.BANDS), layout.REFLECTANCE_SCALE, band_stats.mean, band_stats.std,
        int(run.train_set[0]["image"].shape[-1]), run.train_set.gsd_m)
    saved = None
    if model_dir is not None:
        description = models.save_classifier(
            run.model, model_dir, config.arch, class_names, normalisation,
            provenance | {"results_file": results_path.name, "parameters": asdict(config),
                          "git_commit": git_commit()})
        saved = {"path": str(Path(model_dir).resolve()),
                 "weights_sha256": json.loads(description.read_text())["weights_sha256"]}
    results.write_run(results_path, results.RunResult(
        parameters=asdict(config) | {
            "n_train": len(train_index),
            "n_labelled": len(run.labelled),
            "n_val": len(val_index),
            "n_test": len(test_index),
            "world_size": run.context.world_size,
        },
        seed=config.seed,
        device=str(run.device),
        per_epoch=per_epoch,
        final={
            name: metrics.classification_metrics(
                evaluations[name]["y_true"], evaluations[name]["y_pred"],
                class_names=class_names)
            for name in ("test", "val")
        },
        # accuracy of the last epoch's single-date predictions, at each evaluation date
        per_date_accuracy={name: evaluations[name]["per_date"] for name in ("test", "val")},
        provenance=provenance,
        normalisation=normalisation.describe(),
        model=saved,
        unreadable_samples=unreadable.reasons,
        classes=list(class_names),
        versions=versions(),
        machine=machine(),
        git_commit=git_commit(),
    ))
