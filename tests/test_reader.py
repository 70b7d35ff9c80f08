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
    BandCountError,
    CorpusError,
    DateNotFoundError,
    QABandError,
    RasterReadError,
    RasterSizeError,
    available_dates,
    corpus_size,
    read_raster,
    read_site,
    select_dates,
    verify_sites,
)
from rapid_utils.corpus.synthetic import MARKER, synth_dates

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


# The real PF-QA has 9 bands; which one is the cloud mask is read from the band descriptions.
NINE_QA = ("gap_fill_days", "snow", "cloud_shadow", "cloud_confidence", "haze", "water",
           "sensor", "terrain", "spare")


def nine_band_qa(cloud: np.ndarray, band: int) -> np.ndarray:
    """A 9-band QA raster: `cloud` in band `band` (1-based), the other bands all 100."""
    qa = np.full((9, *cloud.shape), 100, dtype=np.uint8)
    qa[band - 1] = cloud
    return qa


def test_nine_band_qa_masks_on_the_cloud_band(cloudy_site):
    root, site, cloud = cloudy_site
    path = layout.raster_path(root, site, JULY, layout.PF_QA)
    rewrite(path, nine_band_qa(cloud, 4), descriptions=NINE_QA)
    july = read_site(root, site, dates=[JULY]).values[0]
    np.testing.assert_array_equal(np.isnan(july[0]), cloud >= 50)  # band 1 (all 100) ignored
    by_number = read_site(root, site, dates=[JULY], qa_band=4).values[0]
    np.testing.assert_array_equal(by_number, july)


@pytest.mark.parametrize(
    ("descriptions", "found"),
    [
        ((None,) * 9, "none of its 9 bands"),
        (("cloud_confidence", "cloud_probability", *NINE_QA[1:3], *NINE_QA[4:]), "2 of its 9"),
    ],
)
def test_ambiguous_qa_raster_is_refused(cloudy_site, descriptions, found):
    root, site, cloud = cloudy_site
    path = layout.raster_path(root, site, JULY, layout.PF_QA)
    rewrite(path, nine_band_qa(cloud, 2), descriptions=descriptions)
    with pytest.raises(QABandError) as info:
        read_site(root, site, dates=[JULY])
    message = str(info.value)
    assert str(path) in message
    assert found in message
    assert "qa_band" in message
    assert isinstance(info.value, CorpusError)
    # the user's choice settles it, by number or by description
    chosen = read_site(root, site, dates=[JULY], qa_band=2).values[0]
    np.testing.assert_array_equal(np.isnan(chosen[0]), cloud >= 50)
    if descriptions[1] is not None:
        named = read_site(root, site, dates=[JULY], qa_band="Cloud_Probability").values[0]
        np.testing.assert_array_equal(named, chosen)


def test_exploration_passes_qa_band_through(cloudy_site):
    root, site, cloud = cloudy_site
    for date in MONTHLY:  # nine undescribed QA bands at every date: ambiguous unless told
        path = layout.raster_path(root, site, date, layout.PF_QA)
        clouds = cloud if date == JULY else np.zeros_like(cloud)
        rewrite(path, nine_band_qa(clouds, 2), descriptions=(None,) * 9)
    with pytest.raises(QABandError):
        exploration.read_monthly_series(root, [site], qa_mask=True)
    series = exploration.read_monthly_series(root, [site], qa_mask=True, qa_band=2)[site]
    july = series.sel(time=np.datetime64(JULY)).values
    np.testing.assert_array_equal(np.isnan(july[0]), cloud >= 50)


def test_qa_band_by_unknown_description(cloudy_site):
    root, site, cloud = cloudy_site
    path = layout.raster_path(root, site, JULY, layout.PF_QA)
    rewrite(path, nine_band_qa(cloud, 4), descriptions=NINE_QA)
    with pytest.raises(QABandError, match="qa_band='clouds'") as info:
        read_site(root, site, dates=[JULY], qa_band="clouds")
    assert "cloud_confidence" in str(info.value)  # the descriptions it has are listed


def test_one_band_qa_needs_no_description(cloudy_site):
    root, site, cloud = cloudy_site
    path = layout.raster_path(root, site, JULY, layout.PF_QA)
    rewrite(path, cloud[None], descriptions=("whatever",))
    july = read_site(root, site, dates=[JULY]).values[0]
    np.testing.assert_array_equal(np.isnan(july[0]), cloud >= 50)


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
        read_site(root, site)
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


def test_int16_pf_sr_is_read_as_uint16(damaged):
    root, site, path = damaged
    stored = read_raw(path)
    data = stored.astype(np.int16)
    data[:, 0, 0:3] = -9999  # the file's nodata value
    data[2, 5, 5] = -3  # no reflectance is negative: not a measurement
    rewrite(path, data, nodata=-9999)
    values = read_raster(path)
    assert values.dtype == np.uint16
    expected = np.zeros(data.shape, dtype=bool)
    expected[:, 0, 0:3] = True
    expected[2, 5, 5] = True
    np.testing.assert_array_equal(values.mask, expected)
    np.testing.assert_array_equal(values.data[~expected], stored[~expected])
    np.testing.assert_array_equal(values.data[expected], 0)
    july = read_site(root, site, dates=[JULY], qa_mask=False).values[0]
    np.testing.assert_array_equal(np.isnan(july), expected)


def test_float_pf_sr_with_nan_nodata_tag(damaged):
    root, site, path = damaged
    stored = read_raw(path)
    data = stored.astype(np.float32)
    data[1, 3:5, 3:5] = np.nan
    rewrite(path, data, nodata=float("nan"))
    with rasterio.open(path) as src:
        assert np.isnan(src.nodata)
    values = read_raster(path)
    assert values.dtype == np.float32
    assert values.mask.sum() == 4 and values.mask[1, 3:5, 3:5].all()
    assert np.isfinite(values.data).all()  # masked pixels hold 0, never NaN
    np.testing.assert_array_equal(values.data[~values.mask], stored[~values.mask])
    july = read_site(root, site, dates=[JULY], qa_mask=False).values[0]
    np.testing.assert_array_equal(np.isnan(july), values.mask)


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
