"""The label-efficiency study: encoders x evaluations x labels per class, on any corpus kind.

How self-supervised Earth-observation work is judged (SSL4EO-S12, GEO-Bench): each encoder (a
BYOL checkpoint, the same network untrained, ImageNet weights when a file is given) is read
against two baselines, image statistics and random-init features, by a kNN and a linear probe
on frozen features and by fine-tuning, with 1, 5, 10 and all labels per class drawn from R
repeated stratified splits. Every encoder sees the same label subsets (a paired comparison),
and the table gives each mean with a 95 % interval. The numeric part (subsets, kNN, probe,
summary, feature extraction) lives in `evaluation`; this module builds the encoders, feeds
them a study's images and runs the fine-tuning repeats through `train.finetune`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rapid_utils import distributed, evaluation, models, paths, splits, study, train
from rapid_utils.datasets import open_dataset
from rapid_utils.io import write_json_atomic

log = logging.getLogger(__name__)

IMAGESTATS = evaluation.IMAGESTATS  # the image-statistics baseline: no network
RANDOM_INIT = "random-init"  # the network untrained (seeded); fine-tuned, it is "scratch"
ENCODERS = ("byol", RANDOM_INIT, "imagenet")
MIN_FROZEN_REPEATS = 10  # repeats the field reports for frozen evaluations at <= 5 labels
MIN_FINETUNE_REPEATS = 5
PROTOCOLS = ("test", "validation")
COMBINED = f"{IMAGESTATS}+"  # prefix of a network's features joined to imagestats (probe only)


def suite_config(values: Mapping[str, object]) -> SuiteConfig:
    """The study's `SuiteConfig` from a profile's (or notebook 06's) `suite_*` values, `seed`
    and `byol_seed` (the random-init network's, as BYOL's: each pretraining run is read against
    its own random draw): each `suite_<field>` sets `<field>`, so a new field needs no copy."""
    chosen = {f.name: values[f"suite_{f.name}"] for f in fields(SuiteConfig)
              if f"suite_{f.name}" in values}
    for name in ("encoders", "finetune_encoders", "knn_k"):
        if name in chosen:
            chosen[name] = tuple(chosen[name])
    if "labels_per_class" in chosen:
        chosen["labels_per_class"] = tuple(None if k == "all" else int(k)
                                           for k in chosen["labels_per_class"])
    network_seed = values.get("byol_seed")
    return SuiteConfig(seed=int(values["seed"]),
                       network_seed=None if network_seed is None else int(network_seed), **chosen)


@dataclass(frozen=True)
class SuiteConfig:
    """What the label-efficiency study evaluates and how often."""

    encoders: tuple[str, ...] = ("byol", RANDOM_INIT)  # networks; imagestats is always added
    labels_per_class: tuple[int | None, ...] = evaluation.LABELS_PER_CLASS  # None: all
    repeats: int = MIN_FROZEN_REPEATS  # repeated stratified splits for kNN and linear probe
    finetune_repeats: int = MIN_FINETUNE_REPEATS  # the first repeats fine-tuned; 0: none
    finetune_encoders: tuple[str, ...] = ("byol", RANDOM_INIT)
    test_share: float = 0.5  # share of each class held out for testing in every repeat
    knn_k: tuple[int, ...] = evaluation.KNN_K  # one kNN per k
    seed: int = 0  # seeds the splits and the subsets (the random-init network too, by default)
    network_seed: int | None = None  # seeds the random-init network; None: `seed`
    max_items: int | None = 20_000  # labelled items evaluated (a stable per-class draw)
    bn_images: int = 1024  # pool images that re-estimate each network's BatchNorm; 0: none
    eval_size: int | None = None  # networks' frozen features at this many px; None: as read
    protocol: str = "test"  # "validation": `evaluation.validation_subsets`, to choose settings

    @property
    def random_init_seed(self) -> int:
        """The seed of the random-init network: `network_seed`, else `seed`."""
        return self.seed if self.network_seed is None else self.network_seed

    def __post_init__(self) -> None:
        unknown = sorted(set(self.encoders + self.finetune_encoders) - set(ENCODERS))
        if unknown:
            raise ValueError(f"unknown encoders {unknown}; choose from {ENCODERS}")
        if not 0 <= self.finetune_repeats <= self.repeats:
            raise ValueError(f"finetune_repeats must be between 0 and repeats ({self.repeats}), "
                             f"got {self.finetune_repeats}")
        if self.eval_size is not None and self.eval_size < 8:
            raise ValueError(f"eval_size must be at least 8 px (or None: as read), "
                             f"got {self.eval_size}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.repeats < MIN_FROZEN_REPEATS or 0 < self.finetune_repeats < MIN_FINETUNE_REPEATS:
            log.warning("%d frozen and %d fine-tuning repeats: fewer than the %d and %d that "
                        "give intervals worth reading (fine for a test run)", self.repeats,
                        self.finetune_repeats, MIN_FROZEN_REPEATS, MIN_FINETUNE_REPEATS)


def suite_items(labelled: pd.DataFrame, max_items: int | None, seed: int = 0
                ) -> pd.DataFrame:
    """The labelled sites or chips the study evaluates on: all of them, or at most `max_items`
    drawn per class in proportion (by `splits.unit_hash` rank, so the draw is stable), less
    classes with fewer than 2 items (one must train and one test), which are logged."""
    counts = labelled["label"].value_counts()
    rare = counts[counts < 2]
    if len(rare):
        log.warning("left out of the label-efficiency study: %d class(es) with fewer than 2 "
                    "labelled items (%s)", len(rare), ", ".join(map(str, rare.index)))
    kept = labelled[~labelled["label"].isin(rare.index)]
    if max_items is not None and len(kept) > max_items:
        rank = pd.Series(splits.unit_hash(kept["sample_id"], seed, "label-efficiency"),
                         index=kept.index).groupby(kept["label"]).rank(pct=True)
        kept = kept[rank <= max_items / len(kept)]
    return kept.reset_index(drop=True)


def frozen_features(data: study.Study, index: pd.DataFrame, inits: Mapping[str, str],
                    arch: str, seed: int = 0, imagenet_weights_path: str | None = None,
                    batch_size: int = 64, progress: bool = True, bn_images: int = 0,
                    stem: str = "imagenet", eval_size: int | None = None
                    ) -> dict[str, np.ndarray]:
    """Features (N, D) of each encoder and the imagestats baseline on `index`'s images.

    The images are those the encoders see (normalised, one date per site spread over the
    year; chips have one), read once in batches by `evaluation.extract_features`, so memory
    holds features, not images. A "random" init is seeded by `seed`, so random-init features
    are the same network in every run; torch's global random state is left as it was. With
    `bn_images`, each network's BatchNorm statistics are first re-estimated on that many images
    of the pretraining pool (`Study.pretraining_sites`, a stable draw), at evaluation size:
    the images' own, or `eval_size` px (`evaluation.resize_images`; imagestats reads them as
    they are). Random inits take `stem`, a BYOL init its checkpoint's (`models.init_stem`).
    """
    device = distributed.device(distributed.Context())
    encoders = {}
    for name, init in inits.items():
        with torch.random.fork_rng(devices=[]):  # built on the CPU; the caller's RNG untouched
            torch.manual_seed(seed)
            encoder = models.build_model(arch, 4, 0, init, imagenet_weights_path,
                                         stem=models.init_stem(init, stem))
        encoders[name] = encoder.to(device)
    if bn_images and encoders:
        pool = data.pretraining_sites()
        pool = pool.iloc[np.sort(np.random.default_rng(seed).permutation(len(pool))[:bn_images])]
        pool_loader = train.make_loader(
            open_dataset(data.corpus, pool, data.band_stats, date_sampling="spread"),
            batch_size, seed, shuffle=False)
        evaluation.recalibrate_batchnorm(encoders, pool_loader, device, progress=progress,
                                         image_size=eval_size)
    dataset = open_dataset(data.corpus, index, data.band_stats, date_sampling="spread")
    loader = train.make_loader(dataset, batch_size, seed, shuffle=False)  # store: batched reads
    features, _ = evaluation.extract_features(encoders, loader, device, imagestats=True,
                                              progress=progress, image_size=eval_size)
    return features


def encoder_inits(encoders: Sequence[str], runs: str | Path, positives: str = "augment",
                  byol_seed: int = 0, byol_checkpoint: str = "") -> dict[str, str]:
    """`models.build_model` init of each encoder name (the study's BYOL checkpoint for byol)."""
    named = {"byol": "byol", RANDOM_INIT: "random", "imagenet": "imagenet"}
    return {name: study.resolve_init(named[name], runs, positives, byol_seed, byol_checkpoint)
            for name in encoders}


def finetune_records(
    data: study.Study, labelled: pd.DataFrame, inits: Mapping[str, str],
    subsets: Sequence[evaluation.FewLabelSubset],
    base: train.FinetuneConfig, results_dir: str | Path, repeats: int, progress: bool = True,
) -> pd.DataFrame:
    """Fine-tune each encoder on each subset of the first `repeats` repeats (the poster's
    protocol, `train.finetune`) and score it on that repeat's test part; `subsets` index
    `labelled` (`suite_items`).

    One results file per run under `results_dir`, so an interrupted study resumes; a file of
    another configuration is replaced. The last epoch's model is scored (no model selection),
    so the test part also stands in as the validation set `train.finetune` reports. The BYOL
    checkpoint may have seen the test images, without labels: that is the protocol (the
    study pretrains on every image it has), so its split is not checked against these.
    """
    chosen = [s for s in subsets if s.repeat < repeats]
    classifier = f"fine-tuned {base.arch} ({base.epochs} epochs, last epoch scored)"
    rows = []
    for name, init in inits.items():
        stem = models.init_stem(init, base.stem)  # a BYOL init: its checkpoint's
        for subset in tqdm(chosen, desc=f"fine-tuning {name}", unit="run",
                           disable=not progress):
            k = "all" if subset.labels_per_class is None else subset.labels_per_class
            config = replace(base, init=init, stem=stem, label_fraction=1.0, seed=subset.repeat)
            test = labelled.iloc[subset.test]
            result = train.finetune(
                config, data.corpus, labelled.iloc[subset.train], test, test, data.band_stats,
                Path(results_dir) / f"{name}_k{k}_repeat{subset.repeat}.json",
                progress=False, class_names=data.class_names, replace_stale=True,
                check_pretraining_split=False,
            )
            final = result["final"]["test"]
            rows.append({"encoder": name, "evaluation": "finetune", "classifier": classifier,
                         "labels_per_class": k, "repeat": subset.repeat,
                         "accuracy": final["accuracy"],
                         "macro_f1": final["macro_f1"], "n_train": len(subset.train),
                         "n_test": len(subset.test)})
    return pd.DataFrame(rows, columns=list(evaluation.RECORD_COLUMNS))


@dataclass(frozen=True)
class SuiteResult:
    """What `run_suite` found: per-repeat `records`, their `summary` (means and intervals) and
    the `paired` differences of the first encoder against every other row of the table."""

    records: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame


def run_suite(data: study.Study, config: SuiteConfig, arch: str, runs: str | Path,
              finetune_base: train.FinetuneConfig, inits: Mapping[str, str],
              imagenet_weights_path: str | None = None, progress: bool = True,
              stem: str = "imagenet") -> SuiteResult:
    """The whole study on the study's labelled sites or chips.

    Frozen evaluations score each network, imagestats, and (probe only) each network's
    features joined to imagestats (`COMBINED` + name: what a practitioner would deploy).
    Records, the paired table and the subsets (by sample id) are written to
    `paths.label_efficiency_dir(runs)`, or its `validation/` folder under the validation
    protocol. Paired: the first encoder minus imagestats and each other network, and its
    joined features minus imagestats and the others' joined features, with a Student-t interval
    over repeats and, for frozen evaluations, a bootstrap interval over items. Random inits
    take `stem` (fine-tuned: `finetune_base.stem`), BYOL inits their checkpoint's.
    """
    labelled = suite_items(data.index, config.max_items, config.seed)
    labels = labelled["label"].to_numpy()
    subsets = evaluation.few_label_subsets(labels, config.labels_per_class, config.repeats,
                                           config.test_share, config.seed)
    folder = paths.label_efficiency_dir(runs)
    if config.protocol == "validation":
        subsets = evaluation.validation_subsets(labels, subsets, config.test_share, config.seed)
        folder = folder / "validation"
    networks = list(config.encoders)
    features = frozen_features(data, labelled, {name: inits[name] for name in networks},
                               arch, config.random_init_seed, imagenet_weights_path,
                               progress=progress, bn_images=config.bn_images, stem=stem,
                               eval_size=config.eval_size)
    frozen = evaluation.evaluate_frozen(features, labels, subsets, knn_k=config.knn_k,
                                        seed=config.seed, progress=progress)
    combined = evaluation.evaluate_frozen(
        {COMBINED + name: np.hstack([features[IMAGESTATS], features[name]]) for name in networks},
        labels, subsets, evaluations=("linear-probe",), seed=config.seed, progress=progress)
    parts = [frozen.records, combined.records]
    if config.finetune_repeats:
        # test parts are classified after the last epoch only; validation parts after every
        # epoch, whose curve is what sizes fine-tuning (experiments/real_s2/factors.py curves)
        every_epoch = replace(finetune_base, val_every_epoch=config.protocol == "validation")
        parts.append(finetune_records(
            data, labelled, {name: inits[name] for name in config.finetune_encoders}, subsets,
            every_epoch, folder, config.finetune_repeats, progress))
    records = pd.concat(parts, ignore_index=True)
    paired = _paired_table(records, frozen, combined, networks)
    evaluation.write_table(records, folder / "records.csv")
    evaluation.write_table(paired, folder / "paired.csv")
    write_json_atomic(folder / "subsets.json", [  # the paired subsets, by sample id
        {"repeat": s.repeat, "labels_per_class": s.labels_per_class,
         "train": labelled["sample_id"].iloc[s.train].tolist(),
         "test": labelled["sample_id"].iloc[s.test].tolist()} for s in subsets])
    return SuiteResult(records, evaluation.summarise(records), paired)


def _paired_table(records: pd.DataFrame, frozen: evaluation.FrozenPredictions,
                  combined: evaluation.FrozenPredictions, networks: Sequence[str]
                  ) -> pd.DataFrame:
    """The first network against imagestats and the other networks, alone and joined to
    imagestats: Student-t intervals over repeats, bootstrap intervals over items beside them."""
    if not networks:
        return pd.DataFrame()
    first, others = networks[0], networks[1:]
    both = replace(frozen, predicted=frozen.predicted | combined.predicted)
    pairs = [(first, IMAGESTATS), *((first, other) for other in others),
             (COMBINED + first, IMAGESTATS),
             *((COMBINED + first, COMBINED + other) for other in others)]
    keys = ["encoder", "baseline", "evaluation", "classifier", "labels_per_class"]
    tables = []
    for encoder, baseline in pairs:
        table = evaluation.paired_differences(records, encoder, baseline)
        boot = evaluation.bootstrap_differences(both, encoder, baseline)
        if not boot.empty:
            table = table.merge(boot.drop(columns=["n_repeats", "difference_mean", "n_boot"]),
                                on=keys, how="left")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)
