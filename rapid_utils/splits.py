"""Train/validation/test splits by site or by tile, and nested stratified label fractions.

The poster used ~375K/50K/75K sites, i.e. 75/10/15 %. Splitting by tile keeps neighbouring
sites (which share land cover and imagery) on one side of the split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from rapid_utils.labels import CLASSES

SHARES = {"train": 0.75, "val": 0.10, "test": 0.15}
SPLITS = tuple(SHARES)
MIN_TILES = 20  # fewer tiles cut the 75/10/15 shares too coarsely (5 % a tile)
PLACEMENT = 1  # the rule `assign_splits` places sites by: a new rule must redraw stored splits


def unit_hash(keys: Iterable[str], seed: int, purpose: str) -> np.ndarray:
    """A number in [0, 1) per key, fixed by (seed, purpose, key) alone.

    Hand-written (blake2b of the three) rather than a seeded shuffle: a shuffle's draw for one
    site depends on every other site, so adding or removing one site reassigns many others.
    """
    prefix = f"{seed}\x1f{purpose}\x1f".encode()
    digests = b"".join(
        hashlib.blake2b(prefix + str(key).encode(), digest_size=8).digest() for key in keys
    )
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


def _ranks_within(
    groups: np.ndarray, keys: np.ndarray, seed: int, purpose: str
) -> tuple[np.ndarray, np.ndarray]:
    """Each member's rank within its group, ordered by `unit_hash`, and its group's size.

    Cutting (rank + 0.5) / size at fixed shares stratifies by group exactly, and removing one
    member moves at most one other across each cut.
    """
    hashes = unit_hash(keys, seed, purpose)
    ranks, sizes = np.empty(len(keys)), np.empty(len(keys))
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        ranks[rows[np.argsort(hashes[rows], kind="stable")]] = np.arange(len(rows))
        sizes[rows] = len(rows)
    return ranks, sizes


def _split_by_rank(groups: np.ndarray, keys: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    ranks, sizes = _ranks_within(groups, keys, seed, purpose)
    return _split_of_position((ranks + 0.5) / sizes)


def assign_splits(index: pd.DataFrame, by: str = "site", seed: int = 0) -> pd.Series:
    """'train' / 'val' / 'test' per site, 75/10/15 %, stratified by dominant class.

    Each site (or tile, `by="tile"`, which keeps every tile whole within one split) is placed
    by the rank of a hash of (seed, sample_id or tile) within its class, so adding or removing
    sites moves only those sites (and at most one neighbour per class across each cut). Tiles
    are stratified by their most common class.
    """
    if by not in ("site", "tile"):
        raise ValueError(f"split by must be 'site' or 'tile', got {by!r}")
    if by == "site":
        split = _split_by_rank(index["label"].to_numpy(), index["sample_id"].to_numpy(), seed,
                               "split")
        return pd.Series(split, index=index.index, name="split")
    tiles = index.groupby("tile")["label"].agg(lambda labels: labels.value_counts().idxmax())
    if len(tiles) < MIN_TILES:
        raise ValueError(
            f"splitting by tile needs at least {MIN_TILES} tiles, the corpus has "
            f"{len(tiles)}; split by site instead"
        )
    split_of_tile = pd.Series(
        _split_by_rank(tiles.to_numpy(), tiles.index.to_numpy(), seed, "tile split"),
        index=tiles.index,
    )
    return pd.Series(index["tile"].map(split_of_tile).to_numpy(), index=index.index,
                     name="split")


def _split_of_position(position: np.ndarray) -> np.ndarray:
    """Map positions in [0, 1) to splits by the cumulative 75/10/15 shares."""
    edges = np.cumsum(list(SHARES.values()))[:-1]
    return np.array(SPLITS, dtype=object)[np.searchsorted(edges, position, side="right")]


def label_fraction(train: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """A stratified, seeded subset holding `fraction` of the labelled training sites.

    Per class, sites are ranked by a hash of (seed, sample_id) and the first
    ceil(fraction x class size) are kept: the subsets are nested (for one seed, 1 % lies inside
    10 %, which lies inside 100 %), and adding or removing a site changes at most one other
    site's membership per class. Every class present in `train` keeps at least one site.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    ranks, sizes = _ranks_within(train["label"].to_numpy(), train["sample_id"].to_numpy(),
                                 seed, "label fraction")
    keep = ranks < np.maximum(1, np.ceil(fraction * sizes - 1e-9))
    return train[keep]


def fingerprint(index: pd.DataFrame, split: pd.Series) -> str:
    """A short content hash of which site is in which split (order-independent).

    Recorded in checkpoints and results files, so a run that loads a checkpoint made on
    another split (or a reused result from one) can tell.
    """
    lines = sorted(f"{sid}\t{name}" for sid, name in zip(index["sample_id"], split, strict=True))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def inputs_fingerprint(index: pd.DataFrame, by: str = "site", seed: int = 0) -> str:
    """A short hash of all that `assign_splits(index, by, seed)` depends on: the sites, their
    class (and tile, by tile), `by`, `seed`, the shares and the placement rule.

    Equal inputs give an equal split, so a split stored with this fingerprint
    (`study.write_split`) is read instead of drawn again, and one of other inputs is replaced.
    """
    if by not in ("site", "tile"):
        raise ValueError(f"split by must be 'site' or 'tile', got {by!r}")
    rows = index["sample_id"].astype(str) + "\t" + index["label"].astype(str)
    if by == "tile":
        rows = rows + "\t" + index["tile"].astype(str)
    head = f"placement {PLACEMENT}\tby {by}\tseed {seed}\tshares {sorted(SHARES.items())}"
    return hashlib.sha256("\n".join([head, *sorted(rows)]).encode()).hexdigest()[:16]


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

