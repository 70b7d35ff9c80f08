"""The study's split and band statistics: drawn once, kept in the runs folder, read from there."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from rapid_utils import paths, splits, study
from rapid_utils.datasets import BandStats


def _index(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": [f"site_{k:03d}" for k in range(n)],
                         "label": [k % 3 for k in range(n)],
                         "tile": [f"tile_{k % 25}" for k in range(n)]})


def _never(*args, **kwargs):
    raise AssertionError("drawn again instead of read from the runs folder")


def test_the_split_is_written_once_and_read_back(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    index = _index()
    written = study.write_split(tmp_path, index, "site", 0)
    assert written == tmp_path / paths.SPLITS_FILE
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {paths.SPLITS_FILE, paths.SPLITS_RECORD_FILE}  # no temp files
    table = pd.read_csv(written)
    assert list(table.columns) == ["sample_id", "split", "label"]
    expected = splits.assign_splits(index, by="site", seed=0)
    shuffled = index.sample(frac=1, random_state=1)  # read back by sample id, not by row
    pd.testing.assert_series_equal(study.read_split(tmp_path, shuffled), expected[shuffled.index])

    monkeypatch.setattr(splits, "assign_splits", _never)
    inode = written.stat().st_ino
    assert study.write_split(tmp_path, index, "site", 0) == written  # the same inputs
    assert written.stat().st_ino == inode
    pd.testing.assert_series_equal(study.read_split(tmp_path, index), expected)


@pytest.mark.parametrize("change", ["seed", "by", "site removed", "label", "edited"])
def test_a_split_of_other_inputs_is_drawn_again(change: str, tmp_path: Path, caplog) -> None:
    index = _index()
    study.write_split(tmp_path, index)
    by, seed = "site", 0
    if change == "seed":
        seed = 1
    elif change == "by":
        by = "tile"
    elif change == "site removed":
        index = index.drop(index=3)
    elif change == "label":
        index.loc[0, "label"] = 2
    else:
        csv = tmp_path / paths.SPLITS_FILE
        csv.write_text(csv.read_text().replace(",train,", ",test,", 1))
    with pytest.raises(study.StudyFileError, match=paths.SPLITS_FILE):
        study.read_split(tmp_path, index, by, seed)
    with caplog.at_level(logging.WARNING, logger="rapid_utils.study"):
        study.write_split(tmp_path, index, by, seed)
    assert "drawing it again" in caplog.text
    pd.testing.assert_series_equal(study.read_split(tmp_path, index, by, seed),
                                   splits.assign_splits(index, by=by, seed=seed))


def test_reading_a_missing_split_or_statistics_names_the_file_and_the_fix(
        tmp_path: Path) -> None:
    with pytest.raises(study.StudyFileError, match=r"splits\.csv is missing: .*write_split"):
        study.read_split(tmp_path, _index())
    with pytest.raises(FileNotFoundError, match=r"band_stats\.json is missing: .*load_study"):
        study.read_band_stats(tmp_path, "abc", "recipe")


def test_band_statistics_are_written_once_and_replaced_for_another_split(tmp_path: Path,
                                                                         caplog) -> None:
    stats = BandStats((1.0, 2.0, 3.0, 4.0), (1.0, 1.0, 1.0, 1.0), 5, 100, "", recipe="r")

    def compute(fingerprint: str) -> BandStats:
        return dataclasses.replace(stats, split_fingerprint=fingerprint)

    path = study.write_band_stats(tmp_path, "split-a", compute, "r")
    assert path == tmp_path / paths.BAND_STATS_FILE
    assert study.read_band_stats(tmp_path, "split-a", "r") == compute("split-a")
    study.write_band_stats(tmp_path, "split-a", _never, "r")  # current: not computed again
    for fingerprint, recipe in (("split-b", "r"), ("split-a", "other")):
        with pytest.raises(study.StudyFileError, match=r"band_stats\.json was computed"):
            study.read_band_stats(tmp_path, fingerprint, recipe)
    with caplog.at_level(logging.WARNING, logger="rapid_utils.study"):
        study.write_band_stats(tmp_path, "split-b", compute, "r")
    assert "another split" in caplog.text
    assert study.read_band_stats(tmp_path, "split-b", "r").split_fingerprint == "split-b"


def test_a_study_is_drawn_once_then_read_from_its_files(tiny_corpus: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    first = study.load_study(tiny_corpus, runs, stats_sites=8)
    record = json.loads((runs / paths.SPLITS_RECORD_FILE).read_text())
    assert record["split_fingerprint"] == first.split_fingerprint
    assert BandStats.load(runs / paths.BAND_STATS_FILE) == first.band_stats
    assert first.band_stats.split_fingerprint == first.split_fingerprint

    monkeypatch.setattr(splits, "assign_splits", _never)
    monkeypatch.setattr(study, "compute_band_stats", _never)
    again = study.load_study(tiny_corpus, runs, stats_sites=8)
    pd.testing.assert_series_equal(again.split, first.split)
    assert again.band_stats == first.band_stats
