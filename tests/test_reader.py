"""Reading Planet Fusion rasters into xarray, QA masking, and errors for damaged files."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from rapid_utils.corpus import layout
from rapid_utils.corpus.reader import (
    BandCountError,
    CorpusError,
    DateNotFoundError,
    RasterReadError,
    available_dates,
    read_raster,
    read_site,
    select_dates,
    verify_sites,
)
from rapid_utils.corpus.synthetic import synth_dates

MONTHLY = synth_dates("monthly")
JULY = dt.date(2018, 7, 2)  # the first Planet Fusion date of July 2018


def site_ids(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "imagery").glob("*/*/*") if p.is_dir())


def read_raw(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def rewrite(path: Path, data: np.ndarray, **changes) -> None:
    """Overwrite a raster with new pixels, keeping its georeferencing unless changed."""
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(count=data.shape[0], dtype=data.dtype.name, **changes)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture
def site(tiny_corpus) -> str:
    return site_ids(tiny_corpus)[0]


# --- round trip ---------------------------------------------------------------------------


def test_read_site_round_trip(tiny_corpus, site):
    series = read_site(tiny_corpus, site, qa_mask=False)
    assert series.dims == ("time", "band", "y", "x")
    assert series.shape == (24, 4, 32, 32)
    assert series.dtype == np.float32
    assert series["band"].values.tolist() == ["blue", "green", "red", "nir"]
    assert series.name == "reflectance"
    assert series.attrs["sample_id"] == site
    assert not np.isnan(series.values).any()
    times = pd.DatetimeIndex(series["time"].values)
    assert list(times.date) == MONTHLY
    for t, date in enumerate(MONTHLY):
        path = layout.raster_path(tiny_corpus, site, date)
        assert path.stem == times[t].date().isoformat()
        np.testing.assert_allclose(
            series.values[t], read_raw(path).astype(np.float32) / 10_000, rtol=1e-6
        )


def test_read_site_georeferencing(tiny_corpus, site):
    series = read_site(tiny_corpus, site, dates=[JULY])
    with rasterio.open(layout.raster_path(tiny_corpus, site, JULY)) as src:
        crs, transform = src.crs, src.transform
    assert series.rio.crs is not None
    assert series.rio.crs.to_epsg() == crs.to_epsg()
    assert series.rio.crs.to_epsg() == 32600 + int(site.split("_")[0][:-1])
    # x/y are pixel centres in metres
    assert series["x"].values[0] == pytest.approx(transform.c + 1.5)
    assert series["y"].values[0] == pytest.approx(transform.f - 1.5)
    np.testing.assert_allclose(np.diff(series["x"].values), 3.0)
    np.testing.assert_allclose(np.diff(series["y"].values), -3.0)


def test_read_site_explicit_dates(tiny_corpus, site):
    wanted = [dt.date(2019, 1, 3), "2018-06-02", "2019-01-03"]  # any order, repeats
    series = read_site(tiny_corpus, site, dates=wanted)
    assert list(pd.DatetimeIndex(series["time"].values).date) == [  # time order, once each
        dt.date(2018, 6, 2),
        dt.date(2019, 1, 3),
    ]
    full = read_site(tiny_corpus, site)
    np.testing.assert_array_equal(
        series.sel(time="2018-06-02").values, full.sel(time="2018-06-02").values
    )


def test_all_versus_monthly(corpus_copy):
    site = site_ids(corpus_copy)[0]
    extra = dt.date(2018, 1, 8)  # a second PF date in January 2018
    for product in (layout.PF_SR, layout.PF_QA):
        shutil.copy(
            layout.raster_path(corpus_copy, site, MONTHLY[0], product),
            layout.raster_path(corpus_copy, site, extra, product),
        )
    assert len(available_dates(corpus_copy, site)) == 25
    every = read_site(corpus_copy, site, dates="all")
    monthly = read_site(corpus_copy, site, dates="monthly")
    assert every.sizes["time"] == 25
    assert monthly.sizes["time"] == 24
    assert extra in pd.DatetimeIndex(every["time"].values).date
    assert extra not in pd.DatetimeIndex(monthly["time"].values).date


def test_available_dates_ignores_undated_files(corpus_copy):
    site = site_ids(corpus_copy)[0]
    folder = layout.site_dir(corpus_copy, site) / layout.PF_SR
    (folder / "overview.tif").write_bytes(b"not a dated raster")
    assert available_dates(corpus_copy, site) == MONTHLY


def test_select_dates():
    available = MONTHLY[:5]
    assert select_dates(available, "all") == available
    assert select_dates(available, "monthly") == available
    assert select_dates(available, ["2018-02-02"]) == [dt.date(2018, 2, 2)]
    with pytest.raises(ValueError, match="monthly"):
        select_dates(available, "weekly")


# --- QA masking ---------------------------------------------------------------------------


@pytest.fixture
def cloudy_site(corpus_copy) -> tuple[Path, str, np.ndarray]:
    """A site whose July 2018 QA says: cloud (90) at a block, 50 and 49 at two pixels."""
    site = site_ids(corpus_copy)[0]
    for date in MONTHLY:  # no haze or cloud from the generator on any date
        path = layout.raster_path(corpus_copy, site, date, layout.PF_QA)
        rewrite(path, np.zeros((1, 32, 32), dtype=np.uint8))
    qa = np.zeros((1, 32, 32), dtype=np.uint8)
    qa[0, 4:10, 20:30] = 90
    qa[0, 0, 0] = 50
    qa[0, 31, 31] = 49
    rewrite(layout.raster_path(corpus_copy, site, JULY, layout.PF_QA), qa)
    return corpus_copy, site, qa[0]


def test_qa_mask_sets_cloudy_pixels_to_nan(cloudy_site):
    root, site, qa = cloudy_site
    series = read_site(root, site)
    july = series.sel(time=str(JULY)).values
    expected = qa >= 50
    assert expected.sum() == 61
    for band in range(4):
        np.testing.assert_array_equal(np.isnan(july[band]), expected)
    others = series.drop_sel(time=str(JULY)).values
    assert not np.isnan(others).any()


def test_qa_mask_off_and_threshold(cloudy_site):
    root, site, qa = cloudy_site
    raw = read_raw(layout.raster_path(root, site, JULY)).astype(np.float32) / 10_000
    unmasked = read_site(root, site, dates=[JULY], qa_mask=False).values[0]
    assert not np.isnan(unmasked).any()
    np.testing.assert_allclose(unmasked, raw, rtol=1e-6)
    strict = read_site(root, site, dates=[JULY], qa_threshold=95).values[0]
    assert not np.isnan(strict).any()
    loose = read_site(root, site, dates=[JULY], qa_threshold=1).values[0]
    np.testing.assert_array_equal(np.isnan(loose[0]), qa >= 1)


def test_qa_band_out_of_range(tiny_corpus, site):
    with pytest.raises(BandCountError, match="qa_band=2") as info:
        read_site(tiny_corpus, site, dates=[JULY], qa_band=2)
    assert str(layout.raster_path(tiny_corpus, site, JULY, layout.PF_QA)) in str(info.value)


# --- damaged files ------------------------------------------------------------------------


@pytest.fixture
def damaged(corpus_copy) -> tuple[Path, str, Path]:
    """A disposable corpus, one of its sites and that site's July 2018 PF-SR path."""
    site = site_ids(corpus_copy)[1]
    return corpus_copy, site, layout.raster_path(corpus_copy, site, JULY)


def test_truncated_geotiff(damaged):
    root, site, path = damaged
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(RasterReadError, match="corrupt or truncated") as info:
        read_raster(path)
    assert str(path) in str(info.value)
    with pytest.raises(RasterReadError) as info:
        read_site(root, site)
    assert str(path) in str(info.value)


def test_truncated_data_after_header(damaged, tmp_path):
    root, site, path = damaged
    data = read_raw(path)
    plain = tmp_path / "plain.tif"  # uncompressed, header first: damage hits pixel data
    with rasterio.open(path) as src:
        profile = src.profile
    profile.pop("compress", None)
    profile.pop("predictor", None)
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(data)
    content = plain.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(RasterReadError) as info:
        read_site(root, site, dates=[JULY])
    assert str(path) in str(info.value)


def test_corrupt_geotiff(damaged):
    root, site, path = damaged
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(RasterReadError) as info:
        read_site(root, site, dates=[JULY])
    assert str(path) in str(info.value)


def test_missing_raster(damaged):
    _, _, path = damaged
    path.unlink()
    with pytest.raises(RasterReadError, match="missing raster") as info:
        read_raster(path)
    assert str(path) in str(info.value)


def test_missing_raster_date_is_not_found(damaged):
    root, site, path = damaged
    path.unlink()
    with pytest.raises(DateNotFoundError) as info:
        read_site(root, site, dates=[JULY])
    assert site in str(info.value)
    assert JULY.isoformat() in str(info.value)


def test_wrong_band_count(damaged):
    root, site, path = damaged
    rewrite(path, read_raw(path)[:3])
    with pytest.raises(BandCountError, match="3 bands, expected 4") as info:
        read_site(root, site)
    assert str(path) in str(info.value)
    assert isinstance(info.value, CorpusError)


def test_requested_date_missing(tiny_corpus, site):
    with pytest.raises(DateNotFoundError) as info:
        read_site(tiny_corpus, site, dates=["2018-01-08", "2018-07-02"])
    message = str(info.value)
    assert site in message
    assert "2018-01-08" in message
    assert "24 dates from 2018-01-03 to 2019-12-04" in message


def test_site_without_imagery(tiny_corpus):
    with pytest.raises(CorpusError, match="33N_1E-1N_0"):
        read_site(tiny_corpus, "33N_1E-1N_0")


def test_nodata_tag_becomes_nan(damaged):
    root, site, path = damaged
    data = read_raw(path)
    data[:, 3:6, 7:9] = 0
    rewrite(path, data, nodata=0)
    july = read_site(root, site, dates=[JULY], qa_mask=False).values[0]
    expected = np.zeros((32, 32), dtype=bool)
    expected[3:6, 7:9] = True
    for band in range(4):
        np.testing.assert_array_equal(np.isnan(july[band]), expected)


def test_nodata_override(damaged):
    root, site, path = damaged
    data = read_raw(path)
    data[2, 10, 10] = 65535  # one band of one pixel; the file has no nodata tag
    rewrite(path, data)
    with rasterio.open(path) as src:
        assert src.nodata is None
    plain = read_site(root, site, dates=[JULY], qa_mask=False).values[0]
    assert not np.isnan(plain).any()
    assert plain[2, 10, 10] == pytest.approx(6.5535)
    masked = read_site(root, site, dates=[JULY], qa_mask=False, nodata=65535).values[0]
    assert np.isnan(masked).sum() == 1
    assert np.isnan(masked[2, 10, 10])


def test_read_raster_masks_nan_in_float_rasters(tmp_path, tiny_corpus, site):
    path = tmp_path / "float.tif"
    source = layout.raster_path(tiny_corpus, site, JULY)
    shutil.copy(source, path)
    data = read_raw(path).astype(np.float32)
    data[1, 0, 0] = np.nan
    rewrite(path, data)
    values = read_raster(path)
    assert values.mask.sum() == 1
    assert values.mask[1, 0, 0]


# --- verify_sites -------------------------------------------------------------------------


def test_verify_sites_clean(tiny_corpus):
    report = verify_sites(tiny_corpus, site_ids(tiny_corpus)[:4], progress=False)
    assert list(report.columns) == ["sample_id", "path", "problem"]
    assert report.empty


def test_verify_sites_reports_each_problem(corpus_copy):
    ids = site_ids(corpus_copy)
    truncated, bands, nodata, clean, no_imagery = ids[:5]
    dates = {truncated: MONTHLY[2], bands: MONTHLY[5], nodata: MONTHLY[9]}
    paths = {sid: layout.raster_path(corpus_copy, sid, date) for sid, date in dates.items()}
    paths[truncated].write_bytes(paths[truncated].read_bytes()[:200])
    rewrite(paths[bands], read_raw(paths[bands])[:3])
    data = read_raw(paths[nodata])
    data[:, :2, :2] = 0
    rewrite(paths[nodata], data, nodata=0)
    shutil.rmtree(layout.site_dir(corpus_copy, no_imagery))

    report = verify_sites(
        corpus_copy, [truncated, bands, nodata, clean, no_imagery], progress=False
    )
    assert report["sample_id"].tolist() == [truncated, bands, nodata, no_imagery]
    rows = report.set_index("sample_id")
    for sid in (truncated, bands, nodata):
        assert rows.loc[sid, "path"] == str(paths[sid])
        assert str(paths[sid]) in rows.loc[sid, "problem"]
    assert "truncated" in rows.loc[truncated, "problem"]
    assert "3 bands" in rows.loc[bands, "problem"]
    assert "nodata" in rows.loc[nodata, "problem"]
    assert "0.4%" in rows.loc[nodata, "problem"]  # 4 of 1024 pixels
    assert no_imagery in rows.loc[no_imagery, "problem"]
    assert clean not in report["sample_id"].tolist()


def test_july_is_a_corpus_date():
    assert JULY in MONTHLY
