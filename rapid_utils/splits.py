"""Train/validation/test splits by site or by tile, and nested stratified label fractions.

The poster used ~375K/50K/75K sites, i.e. 75/10/15 %. Splitting by tile keeps neighbouring
sites (which share land cover and imagery) on one side of the split.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from rapid_utils.io import atomic_path
from rapid_utils.labels import CLASSES

SHARES = {"train": 0.75, "val": 0.10, "test": 0.15}
SPLITS = tuple(SHARES)
N_FOLDS = 20  # tile split: 5 % per fold, so 15 train, 2 val and 3 test folds


def assign_splits(index: pd.DataFrame, by: str = "site", seed: int = 0) -> pd.Series:
    """'train' / 'val' / 'test' per site, 75/10/15 %, stratified by dominant class.

    `by="tile"` keeps every tile whole within one split (spatial blocks). The assignment
    depends only on the index content and the seed.
    """
    if by not in ("site", "tile"):
        raise ValueError(f"split by must be 'site' or 'tile', got {by!r}")
    ordered = index.sort_values("sample_id")
    splits = _stratified_site_split(ordered, seed) if by == "site" else _tile_split(ordered, seed)
    return pd.Series(splits, index=ordered.index, name="split").reindex(index.index)


def _split_of_position(position: np.ndarray) -> np.ndarray:
    """Map positions in [0, 1) to splits by the cumulative 75/10/15 shares."""
    edges = np.cumsum(list(SHARES.values()))[:-1]
    return np.array(SPLITS)[np.searchsorted(edges, position, side="right")]


def _stratified_site_split(ordered: pd.DataFrame, seed: int) -> np.ndarray:
    """Per class, a seeded shuffle cut at 75/10/15 %.

    Hand-written because sklearn's StratifiedKFold refuses classes with fewer members
    than folds, which rare classes (wetlands, bare) have in small corpora.
    """
    rng = np.random.default_rng(seed)
    splits = np.empty(len(ordered), dtype=object)
    labels = ordered["label"].to_numpy()
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        splits[rows] = _split_of_position((np.arange(len(rows)) + 0.5) / len(rows))
    return splits


def _tile_split(ordered: pd.DataFrame, seed: int) -> np.ndarray:
    """Whole tiles to one split: 20 stratified group folds, 15 train, 2 val, 3 test."""
    groups = ordered["tile"].to_numpy()
    if len(np.unique(groups)) < N_FOLDS:
        raise ValueError(
            f"splitting by tile needs at least {N_FOLDS} tiles, the corpus has "
            f"{len(np.unique(groups))}; split by site instead"
        )
    folds = StratifiedGroupKFold(N_FOLDS, shuffle=True, random_state=seed)
    fold_of = np.empty(len(ordered), dtype=int)
    with warnings.catch_warnings():  # rare classes may have fewer members than folds
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, rows) in enumerate(folds.split(groups, ordered["label"], groups)):
            fold_of[rows] = fold
    return _split_of_position((fold_of + 0.5) / N_FOLDS)


def label_fraction(train: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """A stratified, seeded subset holding `fraction` of the labelled training sites.

    Subsets are nested: for one seed, the 1 % subset lies inside the 10 % subset, which lies
    inside 100 %. Written by hand because nesting needs one fixed per-class ordering that
    is cut at different lengths; sklearn's samplers draw each fraction independently.
    Every class present in `train` keeps at least one site.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    ordered = train.sort_values("sample_id")
    keep = []
    for _, members in ordered.groupby("label", sort=True):
        ranked = members.index.to_numpy()[rng.permutation(len(members))]
        keep.extend(ranked[: max(1, math.ceil(fraction * len(members) - 1e-9))])
    return train.loc[train.index.isin(keep)]


def fraction_column(fraction: float) -> str:
    """Column name of a label fraction in `split_size_table`, e.g. 'train 10%'."""
    return f"train {100 * fraction:g}%"


def split_size_table(
    index: pd.DataFrame, splits: pd.Series, fractions: Sequence[float], seed: int = 0,
    class_names: Sequence[str] = CLASSES,
) -> pd.DataFrame:
    """Sites per class (rows, `class_names` order: the poster's 7 by default) in each split
    and label fraction.

    Columns: `all`, one per split (`train`, `val`, `test`) and one per label fraction of
    the training split (`fraction_column(f)`, drawn with `label_fraction` and `seed`).
    """
    names = pd.Series(np.asarray(class_names)[index["label"].to_numpy()], index=index.index)
    columns = {"all": names}
    columns |= {split: names[splits == split] for split in SPLITS}
    train = index[splits == "train"]
    for fraction in fractions:
        columns[fraction_column(fraction)] = names.loc[label_fraction(train, fraction, seed).index]
    counts = {
        name: values.value_counts().reindex(class_names, fill_value=0)
        for name, values in columns.items()
    }
    table = pd.DataFrame(counts)
    table.index.name = "class"
    return table.astype("int64")


def write_splits_csv(path: str | Path, index: pd.DataFrame, splits: pd.Series) -> Path:
    """Write `sample_id,split,label` (label = dominant class index) atomically; return path."""
    table = pd.DataFrame(
        {"sample_id": index["sample_id"], "split": splits, "label": index["label"]}
    ).sort_values("sample_id")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)
