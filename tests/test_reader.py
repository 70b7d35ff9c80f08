"""Reading Planet Fusion rasters into xarray, QA masking, and errors for damaged files."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

from rapid_utils import exploration
from rapid_utils.corpus import layout
from rapid_utils.corpus.reader import (
    NO_QA_MASK,
    BandCountError,
    CorpusError,
    DateNotFoundError,
    QABandError,
    QAMask,
    RasterReadError,
    RasterSizeError,
    available_dates,
    corpus_size,
    read_raster,
    read_raster_counted,
    read_site,
    select_dates,
    verify_sites,
)
from rapid_utils.corpus.synthetic import INT16_NODATA, MARKER, synth_dates
from rapid_utils.labels import SHARE_COLUMNS

MONTHLY = synth_dates("monthly")
JULY = dt.date(2018, 7, 2)  # the first Planet Fusion date of July 2018


def site_ids(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "imagery").glob("*/*/*") if p.is_dir())


def read_raw(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def rewrite(
    path: Path, data: np.ndarray, descriptions: tuple[str | None, ...] | None = None, **changes
) -> None:
    """Overwrite a raster with new pixels, keeping its georeferencing unless changed.

    `descriptions` names the bands (as the real PF-QA may); by default they have none.
    """
    with rasterio.open(path) as src:
        profile = src.profile
    profile.update(
        count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype.name,
        **changes,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for band, description in enumerate(descriptions or (), start=1):
            if description is not None:
                dst.set_band_description(band, description)


@pytest.fixture
def site(tiny_corpus) -> str:
    return site_ids(tiny_corpus)[0]


# --- round trip ---------------------------------------------------------------------------


def test_read_site_round_trip(tiny_corpus, site):
    series = read_site(tiny_corpus, site)
    assert series.dims == ("time", "band", "y", "x")
    assert series.shape == (24, 4, 32, 32)
    assert series.dtype == np.float32
    assert series["band"].values.tolist() == ["blue", "green", "red", "nir"]
    assert series.name == "reflectance"
    assert series.attrs["sample_id"] == site
    times = pd.DatetimeIndex(series["time"].values)
    assert list(times.date) == MONTHLY
    for t, date in enumerate(MONTHLY):
        path = layout.raster_path(tiny_corpus, site, date)
        assert path.stem == times[t].date().isoformat()
        raw = read_raw(path)  # int16: the fill is missing, other negatives read as 0
        expected = np.where(raw == INT16_NODATA, np.nan, np.maximum(raw, 0) / 10_000)
        np.testing.assert_allclose(series.values[t], expected, rtol=1e-6)


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

CLOUD_BAND, DAYS_BAND = 3, 1  # as Planet's specification and the generator have them


def qa_raster(cloud: np.ndarray, days: np.ndarray) -> np.ndarray:
    """A 3-band int16 PF-QA: days to observation in band 1, 0 in band 2, cloud mask in 3."""
    return np.stack([days, np.zeros_like(days), cloud]).astype(np.int16)


@pytest.fixture
def cloudy_site(corpus_copy) -> tuple[Path, str, np.ndarray, np.ndarray]:
    """A site whose July 2018 QA has a cloud block (60 px) and pixels far from an observation
    (-40 days in rows 0-1, 12 days in row 31); every other date is observed and clear."""
    site = site_ids(corpus_copy)[0]
    clear = np.zeros((32, 32), dtype=np.int16)
    for date in MONTHLY:
        rewrite(layout.raster_path(corpus_copy, site, date, layout.PF_QA), qa_raster(clear, clear))
    cloud, days = clear.copy(), clear.copy()
    cloud[4:10, 20:30] = 1
    days[:2] = -40
    days[31] = 12
    rewrite(layout.raster_path(corpus_copy, site, JULY, layout.PF_QA), qa_raster(cloud, days))
    return corpus_copy, site, cloud.astype(bool), days


def july_nan(root: Path, site: str, qa: QAMask) -> np.ndarray:
    """Which pixels of the site's July chip `read_site` leaves NaN (the same in every band)."""
    july = read_site(root, site, dates=[JULY], qa=qa).values[0]
    assert (np.isnan(july) == np.isnan(july[:1])).all()
    return np.isnan(july[0])


def test_by_default_nothing_is_masked_and_no_qa_is_read(cloudy_site, caplog):
    root, site, _, _ = cloudy_site
    for path in (layout.site_dir(root, site) / layout.PF_QA).glob("*.tif"):
        path.unlink()  # a download without PF-QA reads the same
    series = read_site(root, site)
    assert not np.isnan(series.values).any()
    assert "PF-QA" not in caplog.text  # nothing to warn about: QA is not asked for
    assert not QAMask().active and QAMask() == NO_QA_MASK


def test_cloud_band_masks_its_cloudy_pixels(cloudy_site):
    root, site, cloud, _ = cloudy_site
    series = read_site(root, site, qa=QAMask(cloud_band=CLOUD_BAND))
    july = series.sel(time=str(JULY)).values
    np.testing.assert_array_equal(np.isnan(july[0]), cloud)
    assert not np.isnan(series.drop_sel(time=str(JULY)).values).any()
    # a 0/1 mask against a threshold above 1 masks nothing: the threshold is the user's
    assert not july_nan(root, site, QAMask(cloud_band=CLOUD_BAND, cloud_threshold=2)).any()


def test_days_to_observation_limit(cloudy_site):
    root, site, cloud, days = cloudy_site
    far = july_nan(root, site, QAMask(max_days=30))
    np.testing.assert_array_equal(far, np.abs(days) > 30)
    assert far.sum() == 64  # rows 0-1, whichever side of the date the observation is
    np.testing.assert_array_equal(july_nan(root, site, QAMask(max_days=10)), np.abs(days) > 10)
    both = july_nan(root, site, QAMask(cloud_band=CLOUD_BAND, max_days=30))
    np.testing.assert_array_equal(both, cloud | (np.abs(days) > 30))


def test_qa_band_out_of_range_names_the_file_and_its_bands(cloudy_site):
    root, site, _, _ = cloudy_site
    with pytest.raises(QABandError, match="no single QA band 4") as info:
        read_site(root, site, dates=[JULY], qa=QAMask(cloud_band=4))
    message = str(info.value)
    assert str(layout.raster_path(root, site, JULY, layout.PF_QA)) in message
    assert "3 (no description)" in message and "qa_band" in message
    assert isinstance(info.value, CorpusError)


def test_qa_bands_by_description(cloudy_site):
    root, site, cloud, days = cloudy_site
    path = layout.raster_path(root, site, JULY, layout.PF_QA)
    rewrite(path, qa_raster(cloud, days), descriptions=("days_to_obs", None, "Cloud_Mask"))
    named = july_nan(root, site, QAMask(cloud_band="cloud_mask", max_days=30,
                                        days_band="DAYS_TO_OBS"))
    np.testing.assert_array_equal(named, cloud | (np.abs(days) > 30))
    with pytest.raises(QABandError, match="'clouds'") as info:
        read_site(root, site, dates=[JULY], qa=QAMask(cloud_band="clouds"))
    assert "'Cloud_Mask'" in str(info.value)  # the descriptions it has are listed


@pytest.mark.parametrize("bad", [
    {"cloud_band": 0}, {"cloud_band": ""}, {"cloud_band": True}, {"cloud_threshold": np.nan},
    {"cloud_threshold": "1"}, {"max_days": -1}, {"max_days": 2.5}, {"days_band": None},
])
def test_bad_qa_settings_are_refused(bad):
    with pytest.raises(ValueError, match="QA"):
        QAMask(**bad)


def test_qa_settings_from_flat_parameters():
    assert not QAMask.from_parameters("", 1, "").active  # the profiles' "mask nothing"
    assert QAMask.from_parameters(3, 1, 30) == QAMask(cloud_band=3, max_days=30)
    assert QAMask.from_parameters("cloud", 50, "").cloud_band == "cloud"


def test_exploration_passes_the_qa_mask_through(cloudy_site):
    root, site, cloud, _ = cloudy_site
    series = exploration.read_monthly_series(root, [site], qa=QAMask(cloud_band=CLOUD_BAND))
    july = series[site].sel(time=np.datetime64(JULY)).values
    np.testing.assert_array_equal(np.isnan(july[0]), cloud)
    index = pd.DataFrame({"sample_id": [site], "label": [0], **{c: [1.0 if c == "clc_111"
                          else 0.0] for c in SHARE_COLUMNS}})
    masked = exploration.class_time_profiles(root, index, dates=[JULY],
                                             qa=QAMask(cloud_band=CLOUD_BAND))
    plain = exploration.class_time_profiles(root, index, dates=[JULY])
    assert not masked["blue"].equals(plain["blue"])  # cloudy pixels left out of the mean


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
    data = np.maximum(read_raw(path), 1)  # no 0, fill or negative value of its own
    data[:, 3:6, 7:9] = 0
    rewrite(path, data, nodata=0)
    july = read_site(root, site, dates=[JULY]).values[0]
    expected = np.zeros((32, 32), dtype=bool)
    expected[3:6, 7:9] = True
    for band in range(4):
        np.testing.assert_array_equal(np.isnan(july[band]), expected)


def test_nodata_override(damaged):
    root, site, path = damaged
    data = np.maximum(read_raw(path), 1).astype(np.uint16)
    data[2, 10, 10] = 65535  # one band of one pixel; the file has no nodata tag
    rewrite(path, data, nodata=None)
    with rasterio.open(path) as src:
        assert src.nodata is None
    plain = read_site(root, site, dates=[JULY]).values[0]
    assert not np.isnan(plain).any()
    assert plain[2, 10, 10] == pytest.approx(6.5535)
    masked = read_site(root, site, dates=[JULY], nodata=65535).values[0]
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


def test_corpus_size_is_the_recorded_or_the_product_size(corpus_copy):
    assert corpus_size(corpus_copy) == 32  # the embedded corpus records its size
    (corpus_copy / MARKER).unlink()
    assert corpus_size(corpus_copy) == layout.SITE_SIZE_PX  # the real product: 200 x 200 px


@pytest.mark.parametrize("product", [layout.PF_SR, layout.PF_QA])
def test_wrong_size_raster_is_refused(damaged, product):
    root, site, _ = damaged
    path = layout.raster_path(root, site, JULY, product)
    rewrite(path, read_raw(path)[:, :16, :16])  # the same origin, a quarter of the site
    with pytest.raises(RasterSizeError) as info:
        read_site(root, site, qa=QAMask(cloud_band=3))  # PF-QA is read when a mask asks
    message = str(info.value)
    assert str(path) in message
    assert "16 x 16 px" in message and "32 x 32" in message
    assert "size" in message
    assert isinstance(info.value, CorpusError)
    if product == layout.PF_SR:
        with pytest.raises(RasterSizeError, match="16 x 16 px"):
            read_raster(path, size=32)
        assert read_raster(path).shape == (4, 16, 16)  # no size asked, none checked
        report = verify_sites(root, [site], progress=False)
        assert report["path"].tolist() == [str(path)]
        assert "16 x 16 px" in report["problem"].iloc[0]


def test_size_parameter_overrides_the_corpus_size(damaged):
    root, site, _ = damaged
    with pytest.raises(RasterSizeError, match="expected 64 x 64"):
        read_site(root, site, dates=[JULY], size=64)


def test_int16_pf_sr_only_the_declared_nodata_is_missing(damaged):
    """Real surface reflectance can be slightly negative (water, shadow): a negative value is
    a measurement, read as 0 and counted; only the file's nodata value is missing."""
    root, site, path = damaged
    stored = np.maximum(read_raw(path), 1)
    data = stored.astype(np.int16)
    data[:, 0, 0:3] = -9999  # the file's nodata value
    data[2, 5, 5] = -3  # a dark pixel
    data[0, 7, 7] = -32768  # the usual fill, but not this file's: a (very) negative value
    rewrite(path, data, nodata=-9999)
    values, clipped = read_raster_counted(path)
    assert values.dtype == np.uint16
    assert clipped == 2
    missing = np.zeros(data.shape, dtype=bool)
    missing[:, 0, 0:3] = True
    np.testing.assert_array_equal(values.mask, missing)
    assert values.data[2, 5, 5] == 0 and values.data[0, 7, 7] == 0
    kept = ~missing & (data >= 0)
    np.testing.assert_array_equal(values.data[kept], stored[kept])
    np.testing.assert_array_equal(values.data[missing], 0)
    np.testing.assert_array_equal(read_raster(path).data, values.data)
    july = read_site(root, site, dates=[JULY]).values[0]
    np.testing.assert_array_equal(np.isnan(july), missing)
    assert july[2, 5, 5] == 0


def test_float_pf_sr_with_nan_nodata_tag(damaged):
    root, site, path = damaged
    stored = np.maximum(read_raw(path), 1)
    data = stored.astype(np.float32)
    data[1, 3:5, 3:5] = np.nan
    data[2, 6, 6] = -0.5  # negative: clipped to 0, not missing
    rewrite(path, data, nodata=float("nan"))
    with rasterio.open(path) as src:
        assert np.isnan(src.nodata)
    values = read_raster(path)
    assert values.dtype == np.float32
    assert values.mask.sum() == 4 and values.mask[1, 3:5, 3:5].all()
    assert np.isfinite(values.data).all()  # masked pixels hold 0, never NaN
    assert values.data[2, 6, 6] == 0
    kept = ~values.mask & (data >= 0)
    np.testing.assert_array_equal(values.data[kept], stored[kept])
    july = read_site(root, site, dates=[JULY]).values[0]
    np.testing.assert_array_equal(np.isnan(july), values.mask)


# --- verify_sites -------------------------------------------------------------------------


def test_verify_sites_clean(tiny_corpus):
    report = verify_sites(tiny_corpus, site_ids(tiny_corpus)[:4], progress=False)
    assert list(report.columns) == ["sample_id", "path", "problem"]
    assert report.empty


def test_verify_sites_reports_each_problem(corpus_copy):
    ids = site_ids(corpus_copy)
    truncated, bands, nodata, clean, no_imagery, few_nodata = ids[:6]
    dates = {truncated: MONTHLY[2], bands: MONTHLY[5], few_nodata: MONTHLY[9]}
    paths = {sid: layout.raster_path(corpus_copy, sid, date) for sid, date in dates.items()}
    paths[truncated].write_bytes(paths[truncated].read_bytes()[:200])
    rewrite(paths[bands], read_raw(paths[bands])[:3])
    data = read_raw(paths[few_nodata])
    data[:, :2, :2] = INT16_NODATA
    rewrite(paths[few_nodata], data)
    for date in MONTHLY[:3]:  # three of 24 dates empty: 12.5 % of the site, over the 10 %
        path = layout.raster_path(corpus_copy, nodata, date)
        rewrite(path, np.full_like(read_raw(path), INT16_NODATA))
    shutil.rmtree(layout.site_dir(corpus_copy, no_imagery))

    report = verify_sites(
        corpus_copy, [truncated, bands, nodata, clean, no_imagery, few_nodata], progress=False
    )
    assert report["sample_id"].tolist() == [truncated, bands, nodata, no_imagery]
    rows = report.set_index("sample_id")
    for sid in (truncated, bands):
        assert rows.loc[sid, "path"] == str(paths[sid])
        assert str(paths[sid]) in rows.loc[sid, "problem"]
    assert "truncated" in rows.loc[truncated, "problem"]
    assert "3 bands" in rows.loc[bands, "problem"]
    assert rows.loc[nodata, "path"] == str(layout.site_dir(corpus_copy, nodata))
    assert "nodata" in rows.loc[nodata, "problem"] and "10%" in rows.loc[nodata, "problem"]
    assert no_imagery in rows.loc[no_imagery, "problem"]
    assert clean not in report["sample_id"].tolist()
    assert few_nodata not in report["sample_id"].tolist()  # a few nodata pixels are normal
    lenient = verify_sites(corpus_copy, [nodata], progress=False, max_nodata_share=0.2)
    assert lenient.empty


def test_july_is_a_corpus_date():
    assert JULY in MONTHLY
