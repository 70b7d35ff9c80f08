"""Splits by site and by tile, and nested stratified label fractions, on a synthetic index."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rapid_utils.splits import SHARES, assign_splits, fingerprint, label_fraction

CLASS_WEIGHTS = [0.08, 0.40, 0.30, 0.10, 0.03, 0.03, 0.06]


@pytest.fixture(scope="module")
def index() -> pd.DataFrame:
    """2,000 sites in 250 tiles of 8, dominant classes skewed as in the corpus."""
    rng = np.random.default_rng(7)
    n = 2000
    return pd.DataFrame(
        {
            "sample_id": [f"33N_{i // 8}E-100N_{i % 8}" for i in range(n)],
            "tile": [f"33N_{i // 8}E-100N" for i in range(n)],
            "label": rng.choice(7, size=n, p=CLASS_WEIGHTS),
        }
    )


@pytest.mark.parametrize("by", ["site", "tile"])
def test_split_sizes_follow_75_10_15(index, by):
    splits = assign_splits(index, by=by, seed=0)
    assert splits.notna().all()
    assert set(splits) == set(SHARES)
    shares = splits.value_counts(normalize=True)
    tolerance = 0.01 if by == "site" else 0.04  # whole tiles make the cut coarser
    for name, expected in SHARES.items():
        assert shares[name] == pytest.approx(expected, abs=tolerance)


def test_site_split_is_stratified_by_class(index):
    splits = assign_splits(index, by="site", seed=0)
    table = pd.crosstab(index["label"], splits, normalize="index")
    for label, row in table.iterrows():
        n = int((index["label"] == label).sum())
        for name, expected in SHARES.items():
            assert row[name] == pytest.approx(expected, abs=1.5 / n + 1e-9), (label, name)


def test_tile_split_keeps_tiles_whole(index):
    splits = assign_splits(index, by="tile", seed=0)
    per_tile = splits.groupby(index["tile"]).nunique()
    assert (per_tile == 1).all()


def test_splits_are_deterministic_and_independent_of_row_order(index):
    first = assign_splits(index, seed=3)
    shuffled = index.sample(frac=1.0, random_state=1)
    again = assign_splits(shuffled, seed=3)
    pd.testing.assert_series_equal(first, again.reindex(first.index))
    other = assign_splits(index, seed=4)
    assert (first != other).any()


def test_split_parameter_errors(index):
    with pytest.raises(ValueError, match="'site' or 'tile'"):
        assign_splits(index, by="region")
    few_tiles = index.assign(tile="33N_" + (np.arange(len(index)) % 5).astype(str))
    with pytest.raises(ValueError, match="at least 20 tiles"):
        assign_splits(few_tiles, by="tile")


@pytest.fixture(scope="module")
def train(index) -> pd.DataFrame:
    return index[assign_splits(index, seed=0) == "train"]


def test_label_fraction_sizes_are_stratified(train):
    subset = label_fraction(train, 0.1, seed=0)
    for label, members in train.groupby("label"):
        kept = int((subset["label"] == label).sum())
        assert kept == max(1, math.ceil(0.1 * len(members)))


def test_label_fractions_are_nested_and_seeded(train):
    one = set(label_fraction(train, 0.01, seed=5)["sample_id"])
    ten = set(label_fraction(train, 0.1, seed=5)["sample_id"])
    full = set(label_fraction(train, 1.0, seed=5)["sample_id"])
    assert one < ten < full
    assert full == set(train["sample_id"])
    assert one == set(label_fraction(train, 0.01, seed=5)["sample_id"])
    assert one != set(label_fraction(train, 0.01, seed=6)["sample_id"])


def test_rare_classes_keep_a_site_at_one_percent(train):
    subset = label_fraction(train, 0.01, seed=0)
    assert set(subset["label"]) == set(train["label"])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_label_fraction_rejects_bad_values(train, fraction):
    with pytest.raises(ValueError, match=r"label fraction must be in \(0, 1\]"):
        label_fraction(train, fraction)


@pytest.fixture(scope="module")
def large_index() -> pd.DataFrame:
    """5,000 sites in 625 tiles of 8 (the size at which the review measured moved splits)."""
    rng = np.random.default_rng(11)
    n = 5000
    return pd.DataFrame({
        "sample_id": [f"32N_{i // 8}E-200N_{i % 8}" for i in range(n)],
        "tile": [f"32N_{i // 8}E-200N" for i in range(n)],
        "label": rng.choice(7, size=n, p=CLASS_WEIGHTS),
    })


def _moved(before: pd.Series, after: pd.Series) -> int:
    common = after.index
    return int((before.loc[common] != after.loc[common]).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_removing_one_site_moves_at_most_one_other_per_cut(large_index, seed):
    before = assign_splits(large_index, seed=seed)
    dropped = large_index[large_index["label"] == 1].index[17]
    after = assign_splits(large_index.drop(index=dropped), seed=seed)
    assert _moved(before, after) <= 2  # one site across each of the two cuts of its class


def test_adding_sites_moves_only_few_others(large_index):
    before = assign_splits(large_index.iloc[:4000], seed=0)
    after = assign_splits(large_index, seed=0)
    # 1,000 new sites shift ranks within each class; only sites near the two cuts may move
    assert _moved(before, after.loc[before.index]) <= 0.02 * len(before)


def test_removing_one_tile_moves_few_other_tiles(large_index):
    before = assign_splits(large_index, by="tile", seed=0)
    kept = large_index[large_index["tile"] != large_index["tile"].iloc[40]]
    after = assign_splits(kept, by="tile", seed=0)
    assert _moved(before, after) <= 2 * 8  # at most two whole tiles of 8 sites


def test_label_fraction_barely_moves_when_a_site_is_removed(large_index):
    train = large_index[assign_splits(large_index, seed=0) == "train"]
    before = set(label_fraction(train, 0.1, seed=2)["sample_id"])
    dropped = train.index[5]
    after = set(label_fraction(train.drop(index=dropped), 0.1, seed=2)["sample_id"])
    before.discard(train.loc[dropped, "sample_id"])
    assert len(before ^ after) <= 1


def test_split_fingerprint_ignores_row_order_and_sees_one_moved_site(index):
    split = assign_splits(index, seed=0)
    shuffled = index.sample(frac=1.0, random_state=3)
    assert fingerprint(index, split) == fingerprint(shuffled, split.loc[shuffled.index])
    moved = split.copy()
    moved.iloc[0] = "test" if moved.iloc[0] != "test" else "train"
    assert fingerprint(index, moved) != fingerprint(index, split)
