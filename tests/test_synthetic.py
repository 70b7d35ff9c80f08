"""The embedded synthetic corpus: layout, rasters, labels, placement, determinism, safety."""

from __future__ import annotations

import collections
import datetime as dt
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from rapid_utils import geo
from rapid_utils.corpus import layout
from rapid_utils.corpus.synthetic import (
    GENERATOR_VERSION,
    INT16_NODATA,
    MARKER,
    QA_BANDS,
    SitePlan,
    generate_corpus,
    plan_sites,
    qa_layers,
    render_site,
    stored_values,
    synth_dates,
)
from rapid_utils.labels import CLC7, CLC_CODES, SHARE_COLUMNS

# the real form, e.g. 33N_16E-243N_39_05: zone, 24 km tile, column and row of a 600 m cell
SAMPLE_ID = re.compile(r"^(\d{1,2})N_(\d+)E-(\d+)N_(\d{2})_(\d{2})$")
WEST, EAST, SOUTH, NORTH = -11.0, 32.0, 35.0, 71.0


def site_ids(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "imagery").glob("*/*/*") if p.is_dir())


def label_properties(root: Path, sample_id: str) -> dict:
    """A site's label Feature, written bare or as a one-feature collection."""
    content = json.loads(layout.label_path(root, sample_id).read_text())
    if content["type"] == "Feature":
        return content
    assert content["type"] == "FeatureCollection"
    assert len(content["features"]) == 1
    return content["features"][0]


def file_contents(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path; gzip members decompressed (headers hold times)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[str(path.relative_to(root))] = gzip.decompress(data) if path.suffix == ".gz" else data
    return out


# --- layout -------------------------------------------------------------------------------


def test_layout_of_generated_corpus(tiny_corpus, tiny_settings):
    ids = site_ids(tiny_corpus)
    assert len(ids) == tiny_settings["n_sites"]
    assert (tiny_corpus / layout.LABELS_CSV).is_file()
    assert (tiny_corpus / layout.GEOMETRIES_GEOJSON).is_file()
    assert json.loads((tiny_corpus / MARKER).read_text())["complete"] is True
    dates = synth_dates("monthly")
    for sample_id in ids:
        match = SAMPLE_ID.match(sample_id)
        assert match, sample_id
        utmz, tile, _ = sample_id.split("_", 2)
        folder = tiny_corpus / "imagery" / utmz / tile / sample_id
        for product in ("PF-SR", "PF-QA"):
            names = sorted(p.name for p in (folder / product).iterdir())
            assert names == [f"{d.isoformat()}.tif" for d in dates], (sample_id, product)
        assert (tiny_corpus / "labels" / utmz / tile / f"labels_{sample_id}.geojson").is_file()
    # nothing else at the top level
    assert sorted(p.name for p in tiny_corpus.iterdir()) == sorted(
        ["imagery", "labels", "resources", MARKER]
    )


def test_sample_ids_name_the_600_m_cell_of_each_site(tiny_corpus):
    """`{utmz}_{tile}_{col}_{row}`: the site's south-west corner lies in tile (E, N) of 24 km
    and, inside it, in column `col` (east) and row `row` (north) of 600 m cells."""
    for sample_id in site_ids(tiny_corpus):
        sid = layout.SampleId.parse(sample_id)
        assert str(sid) == sample_id
        col, row = (int(part) for part in sid.rest.split("_"))
        assert 0 <= col < 40 and 0 <= row < 40
        with rasterio.open(layout.raster_path(tiny_corpus, sample_id, synth_dates()[0])) as src:
            left, bottom = src.bounds.left, src.bounds.bottom
        east, north = (int(n) for n in re.findall(r"\d+", sid.tile))
        assert (left - east * 24_000) // 600 == col
        assert (bottom - north * 24_000) // 600 == row


def test_monthly_dates_are_first_pf_date_of_each_month():
    all_dates = layout.pf_dates()
    assert len(all_dates) == 146
    assert all_dates[0] == dt.date(2018, 1, 3)
    assert all_dates[-1] == dt.date(2019, 12, 29)
    assert {(b - a).days for a, b in zip(all_dates, all_dates[1:], strict=False)} == {5}
    monthly = synth_dates()
    assert len(monthly) == 24
    assert [(d.year, d.month) for d in monthly] == [
        (y, m) for y in (2018, 2019) for m in range(1, 13)
    ]
    for date in monthly:
        same_month = [d for d in all_dates if (d.year, d.month) == (date.year, date.month)]
        assert date == min(same_month)
    assert monthly[:3] == [dt.date(2018, 1, 3), dt.date(2018, 2, 2), dt.date(2018, 3, 4)]
    assert synth_dates("all") == all_dates


def test_synth_dates_explicit_and_invalid():
    assert synth_dates(["2018-06-02", dt.date(2018, 1, 3), "2018-06-02"]) == [
        dt.date(2018, 1, 3),
        dt.date(2018, 6, 2),
    ]
    with pytest.raises(ValueError, match="monthly"):
        synth_dates("weekly")
    with pytest.raises(ValueError, match="empty"):
        synth_dates([])


# --- rasters ------------------------------------------------------------------------------


def test_reflectance_rasters(tiny_corpus):
    dates = synth_dates()
    for sample_id in site_ids(tiny_corpus)[::5]:
        utmz = int(sample_id.split("_")[0][:-1])
        for date in (dates[0], dates[17]):
            with rasterio.open(layout.raster_path(tiny_corpus, sample_id, date)) as src:
                assert src.count == 4
                assert src.dtypes == ("int16",) * 4  # the real product's, most likely
                assert src.nodata == INT16_NODATA
                assert src.crs.to_epsg() == 32600 + utmz
                assert src.res == (3.0, 3.0)
                assert (src.width, src.height) == (32, 32)
                assert src.descriptions == ("blue", "green", "red", "nir")
                data = src.read(masked=True)
            # reflectance x 10000: plausible surface reflectance, never empty (a site under
            # fresh snow, SNOW ~0.67 on average, is the brightest there is)
            assert 0 < data.mean() < 7000
            assert data.max() <= 10000
            assert data.mask.mean() < 0.1  # at most a row of nodata


def test_qa_rasters(tiny_corpus):
    """PF-QA as Planet's specification describes it: 3 bands without descriptions, band 1
    signed days to the nearest observation, band 3 a 0/1 cloud mask."""
    dates = synth_dates()
    cloudy_pixels, days_seen = 0, set()
    for sample_id in site_ids(tiny_corpus):
        for date in dates:
            with rasterio.open(layout.raster_path(tiny_corpus, sample_id, date, "PF-QA")) as src:
                assert src.count == 3
                assert src.dtypes == ("int16",) * 3
                assert src.descriptions == (None, None, None)
                qa = src.read()
            days, cloud = qa[QA_BANDS["days_to_observation"] - 1], qa[QA_BANDS["cloud_mask"] - 1]
            assert set(np.unique(cloud)) <= {0, 1}
            assert (np.abs(days[cloud == 1]) > 0).all()  # no observation under a cloud
            cloudy_pixels += int(cloud.sum())
            days_seen |= set(np.unique(days).tolist())
    assert cloudy_pixels > 0  # some cloud somewhere in 24 sites x 24 dates
    assert 0 in days_seen and min(days_seen) < 0 < max(days_seen)


def test_qa_layers_follow_the_cloud_opacity():
    opacity = np.zeros((40, 1, 4, 4), dtype=np.uint8)
    opacity[3, 0, :2] = 80  # a cloud patch over half of date 3
    opacity[5] = 10  # thin haze: not a cloud
    qa = qa_layers(opacity, np.random.default_rng(0))
    assert qa.shape == (40, 3, 4, 4) and qa.dtype == np.int16
    cloud = qa[:, QA_BANDS["cloud_mask"] - 1]
    assert cloud.sum() == 8 and cloud[3, :2].all()
    days = qa[:, QA_BANDS["days_to_observation"] - 1]
    assert (np.abs(days[3, :2]) >= 10).all()
    assert (days == days[:, :1, :1]).all(axis=(1, 2))[np.arange(40) != 3].all()  # one per date
    assert (qa[:, 1] == 0).all()


def test_raster_footprint_matches_label_polygon(tiny_corpus):
    sample_id = site_ids(tiny_corpus)[0]
    with rasterio.open(layout.raster_path(tiny_corpus, sample_id, synth_dates()[0])) as src:
        left, bottom, right, top = src.bounds
        epsg = src.crs.to_epsg()
    ring = label_properties(tiny_corpus, sample_id)["geometry"]["coordinates"][0]
    expected = geo.footprint_lonlat(left, bottom, right, top, epsg)
    np.testing.assert_allclose(ring, expected, atol=1e-6)


# --- labels -------------------------------------------------------------------------------


def test_label_files(tiny_corpus):
    forms = {json.loads(layout.label_path(tiny_corpus, sid).read_text())["type"]
             for sid in site_ids(tiny_corpus)}
    assert forms == {"Feature", "FeatureCollection"}  # both forms, as real files may be
    for sample_id in site_ids(tiny_corpus):
        feature = label_properties(tiny_corpus, sample_id)
        props = feature["properties"]
        assert props["sample_id"] == sample_id
        shares = {k: v for k, v in props.items() if k.startswith("clc_")}
        assert list(shares) == list(SHARE_COLUMNS)
        assert sum(shares.values()) == pytest.approx(100.0, abs=0.01)
        assert min(shares.values()) >= 0
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        ring = geometry["coordinates"][0]
        assert len(ring) == 5 and ring[0] == ring[-1]


def test_resources_agree_with_label_files(tiny_corpus):
    table = pd.read_csv(tiny_corpus / layout.LABELS_CSV).set_index("sample_id")
    assert list(table.columns) == list(SHARE_COLUMNS)
    assert sorted(table.index) == site_ids(tiny_corpus)
    with gzip.open(tiny_corpus / layout.GEOMETRIES_GEOJSON, "rt") as fh:
        geometries = {
            f["properties"]["sample_id"]: f["geometry"] for f in json.load(fh)["features"]
        }
    assert sorted(geometries) == site_ids(tiny_corpus)
    for sample_id in site_ids(tiny_corpus):
        feature = label_properties(tiny_corpus, sample_id)
        row = table.loc[sample_id]
        for column in SHARE_COLUMNS:
            assert row[column] == pytest.approx(feature["properties"][column])
        assert geometries[sample_id] == feature["geometry"]


def test_label_shares_are_counted_from_the_drawn_map():
    plan = plan_sites(3, seed=11, size=24)[1]
    _, _, code_map = render_site(plan, synth_dates(["2018-07-03"]), 24)
    assert set(np.unique(code_map)) <= set(CLC_CODES)
    counts = collections.Counter(code_map.ravel().tolist())
    assert sum(counts.values()) == 24 * 24
    # the plan's dominant poster class owns at least a large part of the map
    dominant_pixels = sum(n for code, n in counts.items() if CLC7[code] == plan.dominant)
    assert dominant_pixels / code_map.size > 0.3


# --- placement ----------------------------------------------------------------------------


def test_sites_lie_on_european_land(tiny_corpus, tiny_settings):
    plans = plan_sites(tiny_settings["n_sites"], tiny_settings["seed"], tiny_settings["size"])
    assert sorted(p.sample_id for p in plans) == site_ids(tiny_corpus)
    lon = np.array([p.lon for p in plans])
    lat = np.array([p.lat for p in plans])
    assert ((lon > WEST) & (lon < EAST) & (lat > SOUTH) & (lat < NORTH)).all()
    assert geo.is_land(lon, lat).all()
    for plan in plans:
        assert plan.epsg == geo.utm_epsg(plan.lon, plan.lat)
        assert plan.sample_id.startswith(f"{plan.epsg - 32600}N_")
        # the planned point lies inside its snapped footprint, and that inside one 600 m cell
        x, y = geo.to_utm(plan.lon, plan.lat, plan.epsg)
        extent = tiny_settings["size"] * layout.PIXEL_SIZE_M
        assert plan.left <= x < plan.left + extent
        assert plan.top - extent <= y < plan.top
        assert plan.left // 600 == (plan.left + extent - 1) // 600


@pytest.mark.parametrize(
    ("lon", "lat", "covered"),
    [
        (9.5, 36.0, False),  # Tunisia
        (10.2, 36.8, False),  # Tunis
        (3.06, 36.75, False),  # Algiers
        (-5.8, 35.77, False),  # Tangier
        (27.56, 53.9, False),  # Minsk
        (30.5, 50.45, False),  # Kyiv
        (28.85, 47.0, False),  # Chisinau
        (30.3, 59.94, False),  # St Petersburg
        (20.5, 54.7, False),  # Kaliningrad
        (14.2, 37.1, True),  # Sicily
        (-6.29, 36.53, True),  # Cadiz
        (-2.46, 36.84, True),  # Almeria
        (23.7, 37.98, True),  # Athens
        (24.8, 35.3, True),  # Crete
        (14.45, 35.9, True),  # Malta
        (27.14, 38.42, True),  # Izmir (Turkey is in EEA-39)
        (28.19, 61.06, True),  # Lappeenranta
        (26.72, 58.38, True),  # Tartu
        (23.16, 53.13, True),  # Bialystok
        (27.6, 47.16, True),  # Iasi
    ],
)
def test_clc_coverage_excludes_africa_and_non_eea_east(lon, lat, covered):
    assert geo.in_clc_coverage(np.array([lon]), np.array([lat]))[0] == covered


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_site_outside_clc_coverage(seed):
    plans = plan_sites(400, seed, 32)
    lon = np.array([p.lon for p in plans])
    lat = np.array([p.lat for p in plans])
    assert geo.in_clc_coverage(lon, lat).all()
    for name, ring in geo.NON_EEA39_RINGS.items():
        assert not geo._in_ring(lon, lat, ring).any(), name


def test_label_polygons_lie_in_europe(tiny_corpus):
    for sample_id in site_ids(tiny_corpus):
        ring = np.array(label_properties(tiny_corpus, sample_id)["geometry"]["coordinates"][0])
        assert ((ring[:, 0] > WEST) & (ring[:, 0] < EAST)).all()
        assert ((ring[:, 1] > SOUTH) & (ring[:, 1] < NORTH)).all()


def test_footprints_do_not_overlap(tiny_corpus):
    corners = []
    for sample_id in site_ids(tiny_corpus):
        with rasterio.open(layout.raster_path(tiny_corpus, sample_id, synth_dates()[0])) as src:
            corners.append((src.crs.to_epsg(), src.bounds.left, src.bounds.top))
    assert len(set(corners)) == len(corners)
    plans = plan_sites(150, 0, 32)
    keys = [(p.epsg, p.left, p.top) for p in plans]
    assert len(set(keys)) == len(keys)
    assert len({p.sample_id for p in plans}) == len(plans)
    # corners on the 3 m pixel grid; at most one site in a 600 m cell
    assert all(p.left % 3 == 0 and p.top % 3 == 0 for p in plans)
    cells = [(p.epsg, p.left // 600, p.top // 600) for p in plans]
    assert len(set(cells)) == len(cells)


@pytest.mark.parametrize("seed", [0, 1])
def test_dominant_class_skew(seed):
    plans = plan_sites(150, seed, 32)
    counts = collections.Counter(p.dominant for p in plans)
    share = {name: counts[name] / len(plans) for name in counts}
    assert share["agricultural"] + share["forest"] > 0.5
    assert share.get("wetlands", 0) < 0.15
    assert share.get("bare", 0) < 0.15
    assert len(counts) >= 5  # rare classes still occur


def test_plan_sites_is_deterministic():
    assert plan_sites(20, 4, 32) == plan_sites(20, 4, 32)
    assert plan_sites(20, 4, 32) != plan_sites(20, 5, 32)


# --- spectral realism ---------------------------------------------------------------------


def _plans_dominated_by(poster_class: str, n: int) -> list[SitePlan]:
    plans = [p for p in plan_sites(150, 2, 32) if p.dominant == poster_class][:n]
    assert len(plans) == n, f"too few {poster_class} sites planned"
    return plans


def test_water_is_dark_in_nir():
    dates = synth_dates()
    for plan in _plans_dominated_by("water", 3):
        reflectance, qa, code_map = render_site(plan, dates, 32)
        water = code_map // 100 == 5
        assert water.mean() > 0.3
        clear = qa[:, 0] == 0  # (T, H, W)
        nir = reflectance[:, 3][clear & water[None]]
        assert nir.mean() < 0.05, plan.sample_id


def test_forest_is_bright_in_nir_in_summer():
    dates = synth_dates()
    summer = np.array([d.month in (6, 7, 8) for d in dates])
    for plan in _plans_dominated_by("forest", 3):
        reflectance, qa, code_map = render_site(plan, dates, 32)
        forest = code_map // 10 == 31
        clear = (qa[:, 0] == 0) & summer[:, None, None]
        red = reflectance[:, 2][clear & forest[None]].mean()
        nir = reflectance[:, 3][clear & forest[None]].mean()
        assert nir / red > 3, plan.sample_id
        assert 0.15 < nir < 0.6


def test_render_site_shapes_and_ranges():
    plan = plan_sites(2, seed=9, size=16)[0]
    dates = synth_dates(["2018-01-03", "2018-07-03", "2019-07-03"])
    reflectance, qa, code_map = render_site(plan, dates, 16)
    assert reflectance.shape == (3, 4, 16, 16)
    assert reflectance.dtype == np.float32
    assert qa.shape == (3, 1, 16, 16) and qa.dtype == np.uint8
    assert code_map.shape == (16, 16)
    assert reflectance.min() > -0.05  # sensor noise leaves dark pixels slightly negative
    assert reflectance.max() <= 1
    assert qa.max() <= 100


# --- determinism --------------------------------------------------------------------------

SMALL = {"n_sites": 4, "size": 16, "progress": False}


@pytest.fixture(scope="module")
def small_seed5(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("s5") / "c", seed=5, workers=1, **SMALL)


def test_same_seed_gives_identical_corpus(small_seed5, tmp_path):
    again = generate_corpus(tmp_path / "again", seed=5, workers=1, **SMALL)
    first, second = file_contents(small_seed5), file_contents(again)
    assert list(first) == list(second)
    assert len(first) == 4 * 24 * 2 + 4 + 3
    for name in first:
        assert first[name] == second[name], name


def test_different_seed_gives_different_corpus(small_seed5, tmp_path):
    other = generate_corpus(tmp_path / "other", seed=6, workers=1, **SMALL)
    assert site_ids(other) != site_ids(small_seed5)
    shares = [
        pd.read_csv(root / layout.LABELS_CSV).drop(columns="sample_id").to_numpy()
        for root in (small_seed5, other)
    ]
    assert not np.array_equal(shares[0], shares[1])
    date = synth_dates()[5]
    pixels = []
    for root in (small_seed5, other):
        with rasterio.open(layout.raster_path(root, site_ids(root)[0], date)) as src:
            pixels.append(src.read())
    assert not np.array_equal(pixels[0], pixels[1])


def test_workers_do_not_change_the_corpus(tmp_path):
    # 18 sites make two chunks of work, so both worker processes write sites
    settings = {"n_sites": 18, "seed": 8, "size": 8, "dates": ["2018-07-03", "2019-01-03"]}
    serial = generate_corpus(tmp_path / "serial", workers=1, progress=False, **settings)
    parallel = generate_corpus(tmp_path / "parallel", workers=2, progress=False, **settings)
    first, second = file_contents(serial), file_contents(parallel)
    assert list(first) == list(second)
    assert len(site_ids(serial)) == 18
    for name in first:
        assert first[name] == second[name], name


# --- regeneration safety ------------------------------------------------------------------

FAST = {"n_sites": 2, "seed": 1, "size": 8, "dates": ["2018-07-03"], "progress": False}


def test_refuses_a_non_empty_folder_without_marker(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty") as info:
        generate_corpus(out, workers=1, **FAST)
    assert str(out) in str(info.value)
    assert (out / "thesis.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.txt"]


def test_empty_folder_is_accepted(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    generate_corpus(out, workers=1, **FAST)
    assert len(site_ids(out)) == 2


def test_complete_corpus_with_same_settings_is_kept(tmp_path):
    out = generate_corpus(tmp_path / "c", workers=1, **FAST)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    assert generate_corpus(out, workers=1, **FAST) == out
    after = {p: p.stat().st_mtime_ns for p in sorted(p for p in out.rglob("*") if p.is_file())}
    assert after == before


def test_incomplete_marker_triggers_regeneration(tmp_path):
    out = generate_corpus(tmp_path / "c", workers=1, **FAST)
    reference = file_contents(out)
    marker = json.loads((out / MARKER).read_text())
    marker["complete"] = False
    (out / MARKER).write_text(json.dumps(marker))
    leftover = out / "imagery" / "99N" / "0E-0N" / "99N_0E-0N_0" / "PF-SR" / "2018-07-03.tif"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half written")
    victim = layout.label_path(out, site_ids(out)[0])
    victim.write_text("{}")
    generate_corpus(out, workers=1, **FAST)
    assert not leftover.exists()
    assert json.loads((out / MARKER).read_text())["complete"] is True
    assert file_contents(out) == reference


def test_other_settings_trigger_regeneration(tmp_path):
    out = generate_corpus(tmp_path / "c", workers=1, **FAST)
    old_ids = site_ids(out)
    generate_corpus(out, workers=1, **{**FAST, "seed": 2})
    assert site_ids(out) != old_ids
    assert json.loads((out / MARKER).read_text())["settings"]["seed"] == 2


@pytest.mark.parametrize("recorded_version", [None, GENERATOR_VERSION - 1, GENERATOR_VERSION + 1])
def test_corpus_of_another_generator_version_is_regenerated(tmp_path, recorded_version):
    out = generate_corpus(tmp_path / "c", workers=1, **FAST)
    reference = file_contents(out)
    marker = json.loads((out / MARKER).read_text())
    assert marker["settings"]["generator_version"] == GENERATOR_VERSION
    if recorded_version is None:  # a marker written before versions were recorded
        del marker["settings"]["generator_version"]
    else:
        marker["settings"]["generator_version"] = recorded_version
    (out / MARKER).write_text(json.dumps(marker))
    victim = layout.label_path(out, site_ids(out)[0])
    victim.write_text("{}")  # stands for the other generator's pixels
    generate_corpus(out, workers=1, **FAST)
    assert json.loads((out / MARKER).read_text())["settings"]["generator_version"] == (
        GENERATOR_VERSION
    )
    assert file_contents(out) == reference


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_sites": 0}, "n_sites"),
        ({"n_sites": -3}, "n_sites"),
        ({"size": 4}, "size"),
        ({"size": 2048}, "size"),
    ],
)
def test_invalid_settings_raise_value_error(tmp_path, kwargs, message):
    out = tmp_path / "c"
    with pytest.raises(ValueError, match=message):
        generate_corpus(out, **{**FAST, "workers": 1, **kwargs})
    assert not out.exists()


def test_stored_values_leave_zero_for_nodata():
    reflectance = np.array([-0.002, 0.0, 0.00004, 0.5, 7.0])
    np.testing.assert_array_equal(stored_values(reflectance), [1, 1, 1, 5000, 65535])


def test_int16_stored_values_keep_negatives_and_leave_the_fill():
    reflectance = np.array([-4.0, -0.002, 0.0, 0.5, 7.0])
    stored = stored_values(reflectance, "int16")
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, [INT16_NODATA + 1, -20, 0, 5000, 32767])


def test_int16_corpus_has_negative_pixels_and_nodata_rows(tmp_path):
    """What the `ci` profile reads every run: some dark pixels below 0 and a few dates whose
    top row is nodata, each flagged by the -32768 tag."""
    root = generate_corpus(tmp_path / "c", n_sites=30, seed=0, size=16, workers=1,
                           progress=False)
    negative = nodata_rows = 0
    for path in root.glob("imagery/*/*/*/PF-SR/*.tif"):
        with rasterio.open(path) as src:
            data = src.read()
        negative += int(((data < 0) & (data != INT16_NODATA)).sum())
        nodata_rows += int((data[:, 0] == INT16_NODATA).all())
        assert ((data == INT16_NODATA).sum(axis=(0, 2)) > 0).sum() <= 1  # the top row only
    assert negative > 0
    assert nodata_rows > 0
