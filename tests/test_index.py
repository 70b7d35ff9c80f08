"""The corpus index: from resources or by walking, and skipping of unusable sites."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rapid_utils import datasets, labels
from rapid_utils.corpus import layout
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.reader import CorpusError, CorpusNotFoundError, available_dates
from rapid_utils.labels import SHARE_COLUMNS

INDEX_COLUMNS = ["sample_id", "utmz", "tile", "lon", "lat", "geometry"]


def site_ids(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "imagery").glob("*/*/*") if p.is_dir())


def read_table(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / layout.LABELS_CSV, dtype={"sample_id": str})


def write_table(root: Path, table: pd.DataFrame) -> None:
    table.to_csv(root / layout.LABELS_CSV, index=False, compression="gzip")


def label_feature(content: dict) -> dict:
    """The Feature of a label file's content, written bare or as a one-feature collection."""
    return content if content["type"] == "Feature" else content["features"][0]


def skipped(index: pd.DataFrame) -> pd.DataFrame:
    return index.attrs["skipped"].set_index("sample_id")


@pytest.fixture(scope="module")
def index(tiny_corpus) -> pd.DataFrame:
    return build_index(tiny_corpus, progress=False)


# --- a clean corpus -----------------------------------------------------------------------


def test_index_columns_and_rows(index, tiny_corpus, tiny_settings):
    assert list(index.columns) == [*INDEX_COLUMNS, *SHARE_COLUMNS, "label", "label_name",
                                   "dates"]
    assert len(index) == tiny_settings["n_sites"]
    first = index["sample_id"].iloc[0]
    assert index["dates"].iloc[0].split() == [  # listed once, for the Datasets
        d.isoformat() for d in available_dates(tiny_corpus, first)]
    assert index["sample_id"].tolist() == site_ids(tiny_corpus)
    assert index.attrs["skipped"].empty
    assert index.attrs["root"] == str(tiny_corpus)
    for row in index.itertuples():
        utmz, tile, _ = row.sample_id.split("_", 2)  # the rest holds an underscore too
        assert row.utmz == utmz
        assert row.tile == f"{utmz}_{tile}"
        assert row.geometry["type"] == "Polygon"


def test_index_locations_in_europe(index):
    assert index["lon"].between(-11, 32).all()
    assert index["lat"].between(35, 71).all()
    # the centroid lies inside the site polygon's lon/lat box
    for row in index.itertuples():
        ring = np.array(row.geometry["coordinates"][0])
        assert ring[:, 0].min() < row.lon < ring[:, 0].max()
        assert ring[:, 1].min() < row.lat < ring[:, 1].max()


def test_index_shares_are_fractions(index, tiny_corpus):
    shares = index[list(SHARE_COLUMNS)]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-9)
    assert (shares >= 0).all().all()
    table = read_table(tiny_corpus).set_index("sample_id").loc[index["sample_id"]]
    np.testing.assert_allclose(shares.to_numpy(), table.to_numpy() / 100, atol=1e-5)


def test_index_label_is_dominant_class(index):
    shares = index[list(SHARE_COLUMNS)]
    assert index["label"].tolist() == labels.dominant_class(shares).tolist()
    assert index["label_name"].tolist() == labels.class_names(index["label"])
    assert index["label"].between(0, 6).all()
    assert index["label_name"].nunique() > 1


def test_walking_gives_the_same_rows(index, corpus_copy):
    shutil.rmtree(corpus_copy / "resources")
    walked = build_index(corpus_copy, progress=False)
    assert walked.attrs["skipped"].empty
    pd.testing.assert_frame_equal(
        walked.drop(columns="geometry"), index.drop(columns="geometry"), rtol=1e-9
    )
    assert walked["geometry"].tolist() == index["geometry"].tolist()


def test_share_scales_give_identical_shares(index, corpus_copy):
    table = read_table(corpus_copy)
    table[list(SHARE_COLUMNS)] = table[list(SHARE_COLUMNS)] / 100.0
    write_table(corpus_copy, table)
    from_fractions = build_index(corpus_copy, progress=False)
    assert from_fractions.attrs["skipped"].empty
    np.testing.assert_allclose(
        from_fractions[list(SHARE_COLUMNS)].to_numpy(),
        index[list(SHARE_COLUMNS)].to_numpy(),
        rtol=1e-12,
        atol=1e-15,
    )
    assert from_fractions["label"].tolist() == index["label"].tolist()


def test_missing_geometries_give_nan_locations(corpus_copy, caplog):
    (corpus_copy / layout.GEOMETRIES_GEOJSON).unlink()
    with caplog.at_level(logging.WARNING, logger="rapid_utils.corpus.index"):
        index = build_index(corpus_copy, progress=False)
    assert index["lon"].isna().all() and index["lat"].isna().all()
    assert "geometries" in caplog.text


# --- skipped sites ------------------------------------------------------------------------


def test_label_file_missing_when_walking(corpus_copy, caplog):
    shutil.rmtree(corpus_copy / "resources")
    victim = site_ids(corpus_copy)[3]
    layout.label_path(corpus_copy, victim).unlink()
    with caplog.at_level(logging.WARNING, logger="rapid_utils.corpus.index"):
        index = build_index(corpus_copy, progress=False)
    assert victim not in index["sample_id"].tolist()
    assert len(index) == len(site_ids(corpus_copy)) - 1
    reasons = skipped(index)
    assert list(reasons.index) == [victim]
    assert reasons.loc[victim, "reason"] == "label file missing"
    assert reasons.loc[victim, "path"] == str(layout.label_path(corpus_copy, victim))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped 1 of 24 sites" in r.getMessage() for r in warnings)
    assert any("label file missing" in r.getMessage() for r in warnings)


def test_unknown_key_in_label_file(corpus_copy):
    shutil.rmtree(corpus_copy / "resources")
    victim = site_ids(corpus_copy)[5]
    path = layout.label_path(corpus_copy, victim)
    content = json.loads(path.read_text())
    label_feature(content)["properties"]["clc_999"] = 0.0
    path.write_text(json.dumps(content))
    index = build_index(corpus_copy, progress=False)
    assert victim not in index["sample_id"].tolist()
    assert index.attrs["skipped"]["sample_id"].tolist() == [victim]  # once, not also "missing"
    reasons = skipped(index)
    assert "clc_999" in reasons.loc[victim, "reason"]
    assert reasons.loc[victim, "path"] == str(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "bad label file"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "found 0"),
        (json.dumps({"type": "Feature", "properties": {"sample_id": "x"}}), "no clc_"),
        (json.dumps({"type": "Point", "coordinates": [0, 0]}), "not a GeoJSON Feature"),
    ],
)
def test_unreadable_label_files_are_skipped(corpus_copy, content, reason):
    shutil.rmtree(corpus_copy / "resources")
    victim = site_ids(corpus_copy)[0]
    layout.label_path(corpus_copy, victim).write_text(content)
    index = build_index(corpus_copy, progress=False)
    assert len(index) == 23
    assert index.attrs["skipped"]["sample_id"].tolist() == [victim]
    assert reason in skipped(index).loc[victim, "reason"]


@pytest.mark.parametrize("form", ["Feature", "FeatureCollection"])
def test_bare_features_and_collections_index_alike(index, corpus_copy, form):
    paths = sorted((corpus_copy / "labels").glob("*/*/labels_*.geojson"))
    assert {json.loads(p.read_text())["type"] for p in paths} == {"Feature", "FeatureCollection"}
    shutil.rmtree(corpus_copy / "resources")
    for path in paths:  # every file in one form
        feature = label_feature(json.loads(path.read_text()))
        content = feature if form == "Feature" else {"type": form, "features": [feature]}
        path.write_text(json.dumps(content))
    walked = build_index(corpus_copy, progress=False)
    assert walked.attrs["skipped"].empty
    pd.testing.assert_frame_equal(walked, index, rtol=1e-9)


def test_shares_not_adding_up_in_resources(corpus_copy):
    table = read_table(corpus_copy)
    victim = table.loc[2, "sample_id"]
    table.loc[2, list(SHARE_COLUMNS)] = table.loc[2, list(SHARE_COLUMNS)] / 200.0  # sums to 0.5
    write_table(corpus_copy, table)
    index = build_index(corpus_copy, progress=False)
    assert victim not in index["sample_id"].tolist()
    assert len(index) == 23
    assert "shares sum to 0.5" in skipped(index).loc[victim, "reason"]


def test_label_files_listing_only_present_classes(index, corpus_copy):
    shutil.rmtree(corpus_copy / "resources")
    for path in (corpus_copy / "labels").glob("*/*/labels_*.geojson"):
        content = json.loads(path.read_text())
        properties = label_feature(content)["properties"]
        label_feature(content)["properties"] = {
            k: v for k, v in properties.items() if not (k.startswith("clc_") and v == 0)
        }
        path.write_text(json.dumps(content))
    walked = build_index(corpus_copy, progress=False)
    assert walked.attrs["skipped"].empty
    pd.testing.assert_frame_equal(
        walked.drop(columns="geometry"), index.drop(columns="geometry"), rtol=1e-9
    )


def test_resources_with_empty_cells_for_absent_classes(index, corpus_copy):
    table = read_table(corpus_copy)
    text = table.astype(object).where(table != 0, "")  # absent classes: empty cells
    write_table(corpus_copy, text)
    assert read_table(corpus_copy)[list(SHARE_COLUMNS)].isna().any().any()
    from_empty = build_index(corpus_copy, progress=False)
    assert from_empty.attrs["skipped"].empty
    pd.testing.assert_frame_equal(from_empty, index)


@pytest.mark.parametrize("walk", [False, True])
def test_non_numeric_and_negative_shares_are_skipped(corpus_copy, walk):
    ids = site_ids(corpus_copy)
    bad = {ids[2]: ("clc_311", "n/a"), ids[9]: ("clc_211", -5.0)}
    if walk:
        shutil.rmtree(corpus_copy / "resources")
        for sid, (column, value) in bad.items():
            path = layout.label_path(corpus_copy, sid)
            content = json.loads(path.read_text())
            label_feature(content)["properties"][column] = value
            path.write_text(json.dumps(content))
    else:
        table = read_table(corpus_copy).astype({"clc_311": object})
        for sid, (column, value) in bad.items():
            table.loc[table["sample_id"] == sid, column] = value
        write_table(corpus_copy, table)
    index = build_index(corpus_copy, progress=False)
    assert len(index) == 22
    reasons = skipped(index)
    assert sorted(reasons.index) == sorted(bad)
    assert reasons.loc[ids[2], "reason"] == "non-numeric share: clc_311='n/a'"
    assert reasons.loc[ids[9], "reason"] == "negative share: clc_211=-5.0"
    source = layout.label_path(corpus_copy, ids[2]) if walk else corpus_copy / layout.LABELS_CSV
    assert reasons.loc[ids[2], "path"] == str(source)


def unusable_table_cases() -> list:
    """(how to spoil the label table, what the message says of it)."""
    return [
        (lambda t: t.assign(clc_999=0.0), "unknown CORINE column(s) 'clc_999'"),
        (lambda t: t.rename(columns={"sample_id": "id"}), "no 'sample_id' column"),
        (lambda t: t.rename(columns=lambda c: c.replace("clc_", "CLC")), "no 'clc_XXX' share"),
    ]


@pytest.mark.parametrize(("spoil", "why"), unusable_table_cases())
def test_unusable_label_table_falls_back_to_the_label_files(index, corpus_copy, caplog, spoil,
                                                             why):
    write_table(corpus_copy, spoil(read_table(corpus_copy)))
    with caplog.at_level(logging.WARNING):
        walked = build_index(corpus_copy, progress=False)
    pd.testing.assert_frame_equal(walked, index, rtol=1e-9)  # the same sites and shares
    message = " ".join(r.getMessage() for r in caplog.records)
    assert str(corpus_copy / layout.LABELS_CSV) in message and why in message
    assert "it has the columns" in message and "expected 'sample_id'" in message
    assert "per-site label files" in message


@pytest.mark.parametrize(("spoil", "why"), unusable_table_cases())
def test_unusable_label_table_without_label_files_is_refused(corpus_copy, spoil, why):
    write_table(corpus_copy, spoil(read_table(corpus_copy)))
    shutil.rmtree(corpus_copy / "labels")
    with pytest.raises(CorpusError) as info:
        build_index(corpus_copy, progress=False)
    message = str(info.value)
    assert str(corpus_copy / layout.LABELS_CSV) in message and why in message
    assert "clc_111 ... clc_523" in message and "no labels/ folder" in message


def test_malformed_and_duplicate_rows_in_resources(corpus_copy):
    table = read_table(corpus_copy)
    duplicate = table.loc[4, "sample_id"]
    table.loc[0, "sample_id"] = "not-a-sample-id"
    table.loc[1, "sample_id"] = None  # an empty cell
    table = pd.concat([table, table.iloc[[4]]], ignore_index=True)
    write_table(corpus_copy, table)
    index = build_index(corpus_copy, progress=False)
    assert len(index) == 22
    assert index["sample_id"].is_unique
    reasons = index.attrs["skipped"]
    assert reasons["reason"].tolist().count("malformed sample_id") == 2
    assert reasons.loc[reasons["reason"] == "duplicate row", "sample_id"].tolist() == [duplicate]


def test_unreadable_label_table(index, corpus_copy):
    (corpus_copy / layout.LABELS_CSV).write_bytes(b"\x1f\x8b garbage")
    pd.testing.assert_frame_equal(build_index(corpus_copy, progress=False), index, rtol=1e-9)
    shutil.rmtree(corpus_copy / "labels")
    with pytest.raises(CorpusError, match="cannot read label table") as info:
        build_index(corpus_copy, progress=False)
    assert str(corpus_copy / layout.LABELS_CSV) in str(info.value)


@pytest.mark.parametrize("walk", [False, True])
def test_imagery_missing(corpus_copy, walk):
    if walk:
        shutil.rmtree(corpus_copy / "resources")
    victim = site_ids(corpus_copy)[7]
    shutil.rmtree(layout.site_dir(corpus_copy, victim))
    index = build_index(corpus_copy, progress=False)
    assert victim not in index["sample_id"].tolist()
    assert skipped(index).loc[victim, "reason"] == "imagery missing"
    kept = build_index(corpus_copy, check_imagery=False, progress=False)
    assert victim in kept["sample_id"].tolist()


@pytest.mark.parametrize("walk", [False, True])
def test_pf_sr_folder_without_dated_raster(corpus_copy, walk):
    if walk:
        shutil.rmtree(corpus_copy / "resources")
    victim = site_ids(corpus_copy)[7]
    folder = layout.site_dir(corpus_copy, victim) / layout.PF_SR
    for path in folder.glob("*.tif"):
        path.unlink()
    (folder / "overview.tif").write_bytes(b"not a dated raster")
    index = build_index(corpus_copy, progress=False)
    assert victim not in index["sample_id"].tolist()
    assert len(index) == 23
    reasons = skipped(index)
    assert reasons.loc[victim, "reason"] == "no dated PF-SR raster"
    assert reasons.loc[victim, "path"] == str(folder)


def test_no_usable_site(corpus_copy):
    shutil.rmtree(corpus_copy / "imagery")
    with pytest.raises(CorpusError, match="no usable site"):
        build_index(corpus_copy, progress=False)


def test_empty_folder(tmp_path):
    with pytest.raises(CorpusNotFoundError, match="rapid-utils synth") as info:
        build_index(tmp_path, progress=False)
    assert str(tmp_path) in str(info.value)


def test_absent_folder(tmp_path):
    absent = tmp_path / "nowhere"
    with pytest.raises(CorpusNotFoundError, match="rapid-utils synth") as info:
        build_index(absent, progress=False)
    assert str(absent) in str(info.value)


def test_datasets_take_the_dates_from_the_index(index, tiny_corpus, monkeypatch):
    stats = datasets.BandStats((1.0,) * 4, (1.0,) * 4, 1, 1)
    listed = datasets.PlanetFusionDataset(tiny_corpus, index.drop(columns="dates"), stats,
                                          date_sampling="all")

    def no_listing(*args, **kwargs):
        raise AssertionError("a site's folder was listed again")

    expected = listed[0]["date"]
    monkeypatch.setattr(datasets, "available_dates", no_listing)
    from_index = datasets.PlanetFusionDataset(tiny_corpus, index, stats, date_sampling="all")
    assert from_index[0]["date"] == expected
