"""The data every training run of a study starts from: index, split and normalisation.

The split and the band statistics are drawn once per study and kept in its runs folder:
`write_split` is the one writer of `splits.csv`, `write_band_stats` of `band_stats.json`,
and everything else reads them (`read_split`, `read_band_stats`). Notebooks 01 to 04 and 06
and the `rapid-utils pretrain|finetune` commands all go through `load_study` (notebook 02,
which needs no statistics, through `write_split` and `read_split`), so a pretraining run and
the fine-tuning runs that follow it see the same split and the same band statistics.
`pretrain_config`, `finetune_config` and `study_arguments` turn the
notebooks' parameter values into configs and `load_study` arguments: one mapping for notebooks
03 and 04, the batch's reuse check and `rapid-utils pretrain|finetune --profile`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from rapid_utils import labels, paths, splits
from rapid_utils.corpus import chips
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.store import PackedStore, is_store
from rapid_utils.datasets import (
    STATS_DATES,
    STATS_DATES_PER_SITE,
    BandStats,
    band_stats_recipe,
    compute_band_stats,
)
from rapid_utils.io import atomic_path, file_sha256, write_json_atomic
from rapid_utils.train import FinetuneConfig, PretrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Study:
    """A corpus split into train/val/test, with the band statistics of its training sites.

    `class_names` are the classes that `index["label"]` numbers (the poster's 7, or a chips
    corpus's own); `unlabelled` holds sites without a label, for pretraining only.
    """

    corpus: Path | str  # a GeoTIFF corpus folder, or a packed store (path or fsspec URL)
    index: pd.DataFrame
    split: pd.Series
    band_stats: BandStats
    class_names: tuple[str, ...] = labels.CLASSES
    unlabelled: pd.DataFrame | None = None
    pretrain_on_train: bool = True  # False: pretraining sees `unlabelled` alone

    def sites(self, name: str) -> pd.DataFrame:
        """The index rows of one split: 'train', 'val' or 'test'."""
        if name not in splits.SPLITS:
            raise ValueError(f"split must be one of {splits.SPLITS}, got {name!r}")
        return self.index[self.split == name]

    def pretraining_sites(self) -> pd.DataFrame:
        """The training sites plus the unlabelled ones: what self-supervised pretraining sees
        (the unlabelled ones alone without `pretrain_on_train`)."""
        parts = [self.sites("train")] if self.pretrain_on_train else []
        if self.unlabelled is not None and not self.unlabelled.empty:
            parts.append(self.unlabelled)
        if not parts:
            raise ValueError("this study pretrains on its unlabelled images alone, and it has "
                             "none: add unlabelled chips, or set pretrain_on_labelled_images "
                             "to 'train'")
        return pd.concat(parts, ignore_index=True)

    @property
    def split_fingerprint(self) -> str:
        """`splits.fingerprint` of the labelled sites' split, recorded with every run."""
        return splits.fingerprint(self.index, self.split)

    def split_sizes(self) -> pd.Series:
        """Sites per split."""
        return pd.Series({name: len(self.sites(name)) for name in splits.SPLITS}, name="sites")


@dataclass(frozen=True)
class IndexedCorpus:
    """A corpus as indexed once (`index_corpus`): where it is and what it holds.

    `index` holds the sites of a GeoTIFF folder or packed store, or the labelled chips of a
    chips corpus, whose `spec` and whole `chips` index (unlabelled chips too) come along.
    """

    location: Path | str  # resolved folder, chips spec file, or store URL
    index: pd.DataFrame
    spec: chips.ChipsSpec | None = None
    chips: chips.ChipsIndex | None = None

    @property
    def n_sites(self) -> int:
        """Usable sites (chips: labelled and unlabelled)."""
        return len(self.index) + (len(self.chips.unlabelled) if self.chips else 0)


def index_corpus(corpus: str | Path) -> IndexedCorpus:
    """Index a corpus (GeoTIFF folder, chips spec or packed store), raising the corpus's own
    clear error (`CorpusError`) when it cannot be used.

    The batch calls this before its first notebook, so a wrong path stops with one message
    instead of failing every job in turn, and hands the result to `load_study`, so the
    corpus is indexed once (minutes at poster scale; every chip is opened for a chips corpus).
    """
    if is_store(corpus):
        store = PackedStore(corpus)
        return IndexedCorpus(store.url, store.index())
    location = Path(corpus).expanduser().resolve()
    if chips.is_chips_corpus(location):
        spec = chips.load_spec(location)
        found = chips.build_chips_index(spec, progress=False)
        return IndexedCorpus(chips.spec_path(location).resolve(), found.labelled, spec, found)
    return IndexedCorpus(location, build_index(location, progress=False))


def load_study(
    corpus: str | Path,
    runs: str | Path,
    split_by: str = "site",
    seed: int = 0,
    stats_sites: int = 256,
    indexed: IndexedCorpus | None = None,
) -> Study:
    """Index the corpus, and read its split and band statistics from the `runs` folder, each
    written there first when missing or made from other inputs (`write_split`,
    `write_band_stats`: the one place both files are created).

    Statistics are drawn from the training sites of the split, with the same seed.
    `corpus` may be a packed store (`rapid-utils pack`): its index has the same rows as the
    corpus's (less samples skipped when packing), so split and statistics are the same too.
    A chips corpus (a chips spec, see `corpus.chips`) is split by chip (`_load_chips_study`).
    `indexed`, this corpus's `index_corpus`, saves indexing it again.
    """
    indexed = indexed or index_corpus(corpus)
    if indexed.chips is not None:
        return _load_chips_study(indexed, runs, split_by, seed, stats_sites)
    location, index = indexed.location, indexed.index
    write_split(runs, index, split_by, seed)
    split = read_split(runs, index, split_by, seed)

    def compute(split_fingerprint: str) -> BandStats:
        return compute_band_stats(location, index[split == "train"], n_sites=stats_sites,
                                  seed=seed, progress=False, split_fingerprint=split_fingerprint)

    recipe = band_stats_recipe(stats_sites, STATS_DATES_PER_SITE, STATS_DATES, seed)
    fingerprint = splits.fingerprint(index, split)
    write_band_stats(runs, fingerprint, compute, recipe)
    return Study(location, index, split, read_band_stats(runs, fingerprint, recipe))


def _load_chips_study(indexed: IndexedCorpus, runs: str | Path, split_by: str, seed: int,
                      stats_sites: int) -> Study:
    """`load_study` for a chips corpus: labelled chips split 75/10/15 by class.

    Unlabelled chips join no split; `Study.pretraining_sites()` adds them to the training
    chips, with `pretrain_on_labelled_images` "all" the validation and test chips' images too
    (without labels: a transductive variant), and with "none" no labelled chip at all (the
    label-efficiency study, whose repeats test every labelled chip in turn). Band
    statistics (`runs/band_stats.json`, written when missing) are `chips.study_band_stats`.
    """
    if split_by != "site":
        raise chips.ChipsError(f"a chips corpus is split by chip (split_by: site); chips have "
                               f"no tiles to split by {split_by!r}")
    spec, found = indexed.spec, indexed.chips
    labelled = found.labelled
    write_split(runs, labelled, "site", seed)
    split = read_split(runs, labelled, "site", seed)
    fingerprint = splits.fingerprint(labelled, split)
    recipe = chips.band_stats_recipe(spec, stats_sites, seed)
    write_band_stats(
        runs, fingerprint,
        lambda _: chips.study_band_stats(spec, labelled, split, found.unlabelled, stats_sites,
                                         seed),
        recipe)
    stats = read_band_stats(runs, fingerprint, recipe)
    unlabelled = found.unlabelled
    if spec.pretrain_on_labelled_images == "all":
        images = labelled[split != "train"].assign(label=chips.UNLABELLED, label_name="")
        unlabelled = pd.concat([unlabelled, images], ignore_index=True)
    return Study(indexed.location, labelled, split, stats, class_names=found.classes,
                 unlabelled=unlabelled,
                 pretrain_on_train=spec.pretrain_on_labelled_images != "none")


class StudyFileError(FileNotFoundError):
    """A file of a runs folder (`splits.csv`, `band_stats.json`) is missing or was made from
    other inputs; the message names the file and what writes it."""


def write_split(runs: str | Path, index: pd.DataFrame, by: str = "site", seed: int = 0) -> Path:
    """Write the split of `index` (`splits.assign_splits`) to `runs/splits.csv`, unless it
    already holds the split of these inputs (`splits.inputs_fingerprint`); return its path.

    The one writer of the split: `sample_id,split,label` (label: the dominant class index),
    atomically, with `runs/splits.json` recording its inputs and content hash. A file of
    other inputs (sites added or removed, another `by` or `seed`) or edited by hand is
    replaced, with a warning that says why. Everything else reads it (`read_split`).
    """
    csv_path, record_path = Path(runs) / paths.SPLITS_FILE, Path(runs) / paths.SPLITS_RECORD_FILE
    inputs = splits.inputs_fingerprint(index, by, seed)
    why = _split_mismatch(Path(runs), inputs)
    if not why:
        return csv_path
    if csv_path.is_file():
        log.warning("%s %s; drawing it again", csv_path, why)
    split = splits.assign_splits(index, by=by, seed=seed)
    table = pd.DataFrame({"sample_id": index["sample_id"], "split": split,
                          "label": index["label"]}).sort_values("sample_id")
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(record_path, {
        "split_by": by, "seed": seed, "sites": len(index), "inputs_fingerprint": inputs,
        "split_fingerprint": splits.fingerprint(index, split),
        "csv_sha256": file_sha256(csv_path),
    })
    log.info("split of %d sites by %s, seed %d -> %s", len(index), by, seed, csv_path)
    return csv_path


def read_split(runs: str | Path, index: pd.DataFrame, by: str = "site", seed: int = 0
               ) -> pd.Series:
    """'train' / 'val' / 'test' per row of `index`, as `runs/splits.csv` holds them.

    Raises `StudyFileError` when the file is missing or holds the split of other inputs:
    `write_split(runs, index, by, seed)` writes it (`load_study` and notebook 02 do).
    """
    csv_path = Path(runs) / paths.SPLITS_FILE
    why = _split_mismatch(Path(runs), splits.inputs_fingerprint(index, by, seed))
    if why:
        raise StudyFileError(
            f"{csv_path} {why}: write the split of these {len(index)} sites by {by} with seed "
            f"{seed} with `study.write_split` (notebooks 01 and 02 and `load_study` do)")
    table = pd.read_csv(csv_path, dtype={"sample_id": str, "split": str})
    of_site = dict(zip(table["sample_id"], table["split"], strict=True))
    return pd.Series(index["sample_id"].astype(str).map(of_site).to_numpy(dtype=object),
                     index=index.index, name="split")


def _split_mismatch(runs: Path, inputs: str) -> str:
    """Why `runs/splits.csv` is not the split of these inputs ('' when it is)."""
    csv_path, record_path = runs / paths.SPLITS_FILE, runs / paths.SPLITS_RECORD_FILE
    if not csv_path.is_file():
        return "is missing"
    try:
        record = json.loads(record_path.read_text())
        if record["inputs_fingerprint"] != inputs:
            return (f"holds another split ({record['sites']} sites by {record['split_by']}, "
                    f"seed {record['seed']}, inputs {record['inputs_fingerprint']!r}; these "
                    f"inputs {inputs!r})")
        if record["csv_sha256"] != file_sha256(csv_path):
            return "was changed after it was written"
    except (OSError, ValueError, KeyError):
        return f"has no readable record of its inputs ({record_path.name})"
    return ""


def write_band_stats(
    runs: str | Path, split_fingerprint: str, compute: Callable[[str], BandStats],
    recipe: str = "",
) -> Path:
    """Write `compute(split_fingerprint)` to `runs/band_stats.json`, unless it already holds
    the statistics of this split drawn by this `recipe`; return its path.

    The one writer of the file (`load_study` calls it); everything else reads it
    (`read_band_stats`). Statistics of another split (another seed, sites added or removed, or
    a file older than split fingerprints) would normalise with validation or test pixels, and
    those of another recipe (sample size, seed, pool, per-source or pooled) are not the ones
    asked for: both are replaced, with a warning that says why.
    """
    stats_path = Path(runs) / paths.BAND_STATS_FILE
    why = _band_stats_mismatch(stats_path, split_fingerprint, recipe)
    if not why:
        return stats_path
    if stats_path.is_file():
        log.warning("%s %s; recomputing it", stats_path, why)
    stats = compute(split_fingerprint)
    stats.save(stats_path)  # atomic: concurrent processes write the same numbers safely
    log.info("computed band statistics of %d training sites -> %s", stats.n_sites, stats_path)
    return stats_path


def read_band_stats(runs: str | Path, split_fingerprint: str, recipe: str = "") -> BandStats:
    """The band statistics in `runs/band_stats.json`.

    Raises `StudyFileError` when the file is missing or holds the statistics of another split
    or recipe: `write_band_stats` writes it (`load_study` does, and so notebook 01).
    """
    stats_path = Path(runs) / paths.BAND_STATS_FILE
    why = _band_stats_mismatch(stats_path, split_fingerprint, recipe)
    if why:
        raise StudyFileError(f"{stats_path} {why}: write it with `study.load_study` (notebook "
                             "01 does) for this split and these statistics settings")
    log.info("band statistics from %s", stats_path)
    return BandStats.load(stats_path)


def _band_stats_mismatch(stats_path: Path, split_fingerprint: str, recipe: str) -> str:
    """Why `stats_path` does not hold the statistics of this split and recipe ('' when it does)."""
    if not stats_path.is_file():
        return "is missing"
    stats = BandStats.load(stats_path)
    if stats.split_fingerprint != split_fingerprint:
        return (f"was computed on another split (fingerprint {stats.split_fingerprint!r}, this "
                f"split {split_fingerprint!r})")
    if stats.recipe != recipe:
        return f"was computed by another recipe ({stats.recipe!r}, now {recipe!r})"
    return ""


def study_arguments(values: Mapping[str, Any]) -> tuple[Path | str, Path, str, int, int]:
    """`load_study`'s corpus, runs, split_by, seed and stats_sites from notebook 03's or 04's
    parameter values (`store`, when not empty, in place of `corpus_dir`)."""
    return (paths.data_location(values["store"] or values["corpus_dir"]),
            Path(values["runs_dir"]).expanduser().resolve(), values["split_by"],
            int(values["split_seed"]), int(values["stats_sites"]))


def pretrain_config(values: Mapping[str, Any]) -> PretrainConfig:
    """The pretraining config of notebook 03's (or a batch job's) parameter values: every
    `PretrainConfig` field among them, the defaults for the others; other keys are ignored."""
    return PretrainConfig(**{f.name: values[f.name] for f in fields(PretrainConfig)
                             if f.name in values})


def finetune_config(values: Mapping[str, Any], runs: str | Path) -> FinetuneConfig:
    """The fine-tuning config of notebook 04's (or a batch job's) parameter values.

    `values` holds `init` ('random', 'imagenet', 'byol' or 'byol:<path>'), optionally
    `positives`, `byol_seed`, `byol_checkpoint` (which BYOL checkpoint 'byol' means) and
    `imagenet_weights_path` ('' for torchvision's cache), and any `FinetuneConfig` field;
    other keys are ignored. One function for both, so the batch knows which run a results
    file must hold before it reuses it. The profile's `stem` is the one BYOL pretrains with
    and random inits take; init 'imagenet' keeps ImageNet's stem, the only one its weights fit.
    """
    init = resolve_init(values["init"], runs, values.get("positives", "augment"),
                        int(values.get("byol_seed", 0)), values.get("byol_checkpoint", ""))
    weights = values.get("imagenet_weights_path") or ""
    chosen = {f.name: values[f.name] for f in fields(FinetuneConfig)
              if f.name in values and f.name not in ("init", "imagenet_weights_path")}
    if init == "imagenet":
        chosen["stem"] = "imagenet"
    return FinetuneConfig(
        init=init, imagenet_weights_path=str(Path(weights).expanduser().resolve()) if weights
        else None, **chosen,
    )


def resolve_init(init: str, runs: str | Path, positives: str = "augment", seed: int = 0,
                 byol_checkpoint: str = "") -> str:
    """The model factory's init for 'random', 'imagenet', 'byol' or 'byol:<path>'.

    'byol' means `byol_checkpoint` when given, else the checkpoint that pretraining with the
    same `positives` and `seed` writes under `runs` (notebook 03, `rapid-utils pretrain`).
    """
    if init in ("random", "imagenet") or init.startswith("byol:"):
        return init
    if init != "byol":
        raise ValueError(
            f"init must be 'random', 'imagenet', 'byol' or 'byol:<path>', got {init!r}"
        )
    default = paths.byol_run_dir(Path(runs), positives, seed) / paths.CHECKPOINT_FILE
    checkpoint = Path(byol_checkpoint).expanduser() if byol_checkpoint else default
    return f"byol:{checkpoint.resolve()}"
