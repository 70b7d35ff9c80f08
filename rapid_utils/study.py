"""The data every training run of a study starts from: index, split and normalisation.

Notebooks 03 and 04 and the `rapid-utils pretrain|finetune` commands all call `load_study`,
so a pretraining run and the fine-tuning runs that follow it see the same split and the
same band statistics. `pretrain_config`, `finetune_config` and `study_arguments` turn the
notebooks' parameter values into configs and `load_study` arguments: one mapping for notebooks
03 and 04, the batch's reuse check and `rapid-utils pretrain|finetune --profile`.
"""

from __future__ import annotations

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

    def sites(self, name: str) -> pd.DataFrame:
        """The index rows of one split: 'train', 'val' or 'test'."""
        if name not in splits.SPLITS:
            raise ValueError(f"split must be one of {splits.SPLITS}, got {name!r}")
        return self.index[self.split == name]

    def pretraining_sites(self) -> pd.DataFrame:
        """The training sites plus the unlabelled ones: what self-supervised pretraining sees."""
        if self.unlabelled is None or self.unlabelled.empty:
            return self.sites("train")
        return pd.concat([self.sites("train"), self.unlabelled], ignore_index=True)

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
    """Index the corpus, split it, and read (or compute and store) its band statistics.

    Band statistics come from `runs/band_stats.json` (notebook 01 writes it); when it is
    missing they are computed from the training sites with the same seed and stored there.
    `corpus` may be a packed store (`rapid-utils pack`): its index has the same rows as the
    corpus's (less samples skipped when packing), so split and statistics are the same too.
    A chips corpus (a chips spec, see `corpus.chips`) is split by chip (`_load_chips_study`).
    `indexed`, this corpus's `index_corpus`, saves indexing it again.
    """
    indexed = indexed or index_corpus(corpus)
    if indexed.chips is not None:
        return _load_chips_study(indexed, runs, split_by, seed, stats_sites)
    location, index = indexed.location, indexed.index
    split = splits.assign_splits(index, by=split_by, seed=seed)

    def compute(split_fingerprint: str) -> BandStats:
        return compute_band_stats(location, index[split == "train"], n_sites=stats_sites,
                                  seed=seed, progress=False, split_fingerprint=split_fingerprint)

    recipe = band_stats_recipe(stats_sites, STATS_DATES_PER_SITE, STATS_DATES, seed)
    stats = stored_band_stats(runs, splits.fingerprint(index, split), compute, recipe)
    return Study(location, index, split, stats)


def _load_chips_study(indexed: IndexedCorpus, runs: str | Path, split_by: str, seed: int,
                      stats_sites: int) -> Study:
    """`load_study` for a chips corpus: labelled chips split 75/10/15 by class.

    Unlabelled chips join no split; `Study.pretraining_sites()` adds them to the training
    chips, and with `pretrain_on_labelled_images` the validation and test chips' images too
    (without labels: a label-efficiency study pretrains on every image it has). Band
    statistics (`runs/band_stats.json`, computed when missing) are `chips.study_band_stats`.
    """
    if split_by != "site":
        raise chips.ChipsError(f"a chips corpus is split by chip (split_by: site); chips have "
                               f"no tiles to split by {split_by!r}")
    spec, found = indexed.spec, indexed.chips
    labelled = found.labelled
    split = splits.assign_splits(labelled, by="site", seed=seed)
    stats = stored_band_stats(
        runs, splits.fingerprint(labelled, split),
        lambda _: chips.study_band_stats(spec, labelled, split, found.unlabelled, stats_sites,
                                         seed),
        chips.band_stats_recipe(spec, stats_sites, seed))
    unlabelled = found.unlabelled
    if spec.pretrain_on_labelled_images:
        images = labelled[split != "train"].assign(label=chips.UNLABELLED, label_name="")
        unlabelled = pd.concat([unlabelled, images], ignore_index=True)
    return Study(indexed.location, labelled, split, stats, class_names=found.classes,
                 unlabelled=unlabelled)


def stored_band_stats(
    runs: str | Path, split_fingerprint: str, compute: Callable[[str], BandStats],
    recipe: str = "",
) -> BandStats:
    """The band statistics in `runs/band_stats.json` when they come from this split and were
    drawn by this `recipe`, else `compute(split_fingerprint)`, stored there.

    Statistics of another split (another seed, sites added or removed, or a file older than
    split fingerprints) would normalise with validation or test pixels, and those of another
    recipe (sample size, seed, pool, per-source or pooled) are not the ones asked for: both
    are replaced, with a warning that says why.
    """
    stats_path = Path(runs) / paths.BAND_STATS_FILE
    if stats_path.is_file():
        stats = BandStats.load(stats_path)
        if stats.split_fingerprint == split_fingerprint and stats.recipe == recipe:
            log.info("band statistics from %s", stats_path)
            return stats
        why = (f"another split (fingerprint {stats.split_fingerprint!r}, this split "
               f"{split_fingerprint!r})" if stats.split_fingerprint != split_fingerprint
               else f"another recipe ({stats.recipe!r}, now {recipe!r})")
        log.warning("%s was computed on %s; recomputing it", stats_path, why)
    stats = compute(split_fingerprint)
    stats.save(stats_path)  # atomic: concurrent processes write the same numbers safely
    log.info("computed band statistics of %d training sites -> %s", stats.n_sites, stats_path)
    return stats


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
    file must hold before it reuses it.
    """
    init = resolve_init(values["init"], runs, values.get("positives", "augment"),
                        int(values.get("byol_seed", 0)), values.get("byol_checkpoint", ""))
    weights = values.get("imagenet_weights_path") or ""
    chosen = {f.name: values[f.name] for f in fields(FinetuneConfig)
              if f.name in values and f.name not in ("init", "imagenet_weights_path")}
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
