"""The real RapidAI4EO file form, built by hand from the published facts (not by our generator):
index -> reader -> packed store -> dataset must accept it as it is.

Facts (../shared/REAL_FORMAT.md): a real address is
`imagery/33N/16E-243N/33N_16E-243N_39_05/PF-SR/2018-01-03.tif`; PF-SR is 200 x 200 px of
int16 reflectance x 10000 with a -32768 fill, slightly negative over dark water; PF-QA has
several bands without descriptions (band 1 days to the nearest observation, band 3 a cloud
mask); a label file may be a bare GeoJSON Feature with the 44 `clc_XXX` properties.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rapid_utils import datasets, geo
from rapid_utils.corpus import layout, store
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.reader import QAMask, read_raster_counted, read_site
from rapid_utils.labels import SHARE_COLUMNS

# (sample_id, dominant CLC code): the published address and two neighbouring cells
SITES = {"33N_16E-243N_39_05": "clc_211", "33N_16E-243N_38_05": "clc_311",
         "33N_16E-243N_00_39": "clc_512"}
DATES = [dt.date(2018, 1, 3), dt.date(2018, 1, 8), dt.date(2018, 7, 2)]
SIDE = 200
FILL = -32768


def cell_origin(sample_id: str) -> tuple[float, float]:
    """UTM left and top of a site from its id: 24 km tiles, 600 m cells (column, row)."""
    _, tile, col, row = sample_id.split("_")
    east, north = (int(part[:-1]) for part in tile.split("-"))
    left = east * 24_000 + int(col) * 600
    bottom = north * 24_000 + int(row) * 600
    return left, bottom + 600


def write_geotiff(path: Path, data: np.ndarray, sample_id: str, nodata: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    left, top = cell_origin(sample_id)
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=len(data),
                       dtype=data.dtype.name, crs="EPSG:32633", nodata=nodata,
                       transform=from_origin(left, top, 3.0, 3.0)) as dst:
        dst.write(data)  # no band descriptions, as the real files may have none


@pytest.fixture(scope="module")
def real_form(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sites of the real form, three dates each, one label file per site."""
    root = tmp_path_factory.mktemp("real") / "rapidai4eo"
    rng = np.random.default_rng(0)
    for n, (sample_id, dominant) in enumerate(SITES.items()):
        folder = root / "imagery" / "33N" / "16E-243N" / sample_id
        for t, date in enumerate(DATES):
            base = np.array([300, 600, 500, 2500])[:, None, None] * (2 + n) / 2
            reflectance = (base + rng.normal(0, 20, (4, SIDE, SIDE))).astype(np.int16)
            reflectance[3, :5, :5] = -12  # dark water: slightly negative NIR
            if t == 1:
                reflectance[:, -3:] = FILL  # a strip off the scene's edge
            write_geotiff(folder / "PF-SR" / f"{date}.tif", reflectance, sample_id, FILL)
            qa = np.zeros((3, SIDE, SIDE), dtype=np.int16)
            qa[0] = 0 if t == 0 else -4  # days to the nearest real observation
            qa[2, 50:60, 50:70] = 1 if t == 2 else 0  # a cloud on July 2nd
            write_geotiff(folder / "PF-QA" / f"{date}.tif", qa, sample_id, None)
        left, top = cell_origin(sample_id)
        ring = geo.footprint_lonlat(left, top - 600, left + 600, top, 32633)
        shares = {column: 0.0 for column in SHARE_COLUMNS} | {dominant: 0.7, "clc_231": 0.3}
        feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                   "properties": {"sample_id": sample_id, **shares}}
        label = root / "labels" / "33N" / "16E-243N" / f"labels_{sample_id}.geojson"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(json.dumps(feature))
    return root


def test_the_published_address_is_where_the_layout_looks() -> None:
    path = layout.raster_path(Path("."), "33N_16E-243N_39_05", dt.date(2018, 1, 3))
    assert path.as_posix() == "imagery/33N/16E-243N/33N_16E-243N_39_05/PF-SR/2018-01-03.tif"
    sid = layout.SampleId.parse("33N_16E-243N_39_05")
    assert (sid.utmz, sid.tile, sid.rest) == ("33N", "16E-243N", "39_05")
    assert layout.cell_sample_id("33N", 16 * 24_000 + 39 * 600, 243 * 24_000 + 5 * 600) == str(sid)


def test_index_reader_store_and_dataset_accept_the_real_form(real_form: Path,
                                                              tmp_path: Path) -> None:
    index = build_index(real_form, progress=False)
    assert index["sample_id"].tolist() == sorted(SITES)
    assert index.attrs["skipped"].empty
    assert (index["tile"] == "33N_16E-243N").all()
    assert index["lon"].between(12, 16).all() and index["lat"].between(52, 54).all()
    assert index["dates"].str.split().map(len).tolist() == [3, 3, 3]

    site = "33N_16E-243N_39_05"
    path = layout.raster_path(real_form, site, DATES[1])
    values, clipped = read_raster_counted(path)
    assert clipped == 25  # the dark water pixels, read as 0
    assert values.mask[:, -3:].all() and values.mask.sum() == 4 * 3 * SIDE  # only the fill
    plain = read_site(real_form, site, dates="all")
    assert plain.shape == (3, 4, SIDE, SIDE)
    assert np.isnan(plain.values).sum() == 4 * 3 * SIDE
    assert (plain.values[:, 3, :5, :5] == 0).all()
    cloudy = read_site(real_form, site, dates="all", qa=QAMask(cloud_band=3))
    assert np.isnan(cloudy.values[2, 0]).sum() == 200  # the July cloud
    gap_filled = read_site(real_form, site, dates="all", qa=QAMask(max_days=3))
    assert np.isnan(gap_filled.values[1:, 0]).all() and not np.isnan(gap_filled.values[0]).any()

    out = tmp_path / "real.zarr"
    report = store.pack(real_form, out, dates="all", scheduler="synchronous", progress=False)
    assert (report.packed, len(report.skipped)) == (3, 0)
    assert report.clipped_negative == 3 * 3 * 25
    packed = store.PackedStore(out)
    chip = packed.read_chip(site, DATES[1])
    np.testing.assert_array_equal(chip.mask, values.mask)
    np.testing.assert_array_equal(chip.data[~chip.mask], values.data[~values.mask])

    stats = datasets.compute_band_stats(real_form, index, dates="all", progress=False)
    from_tiffs = datasets.open_dataset(real_form, index, stats, date_sampling="all")
    from_store = datasets.open_dataset(out, index, stats, date_sampling="all")
    for item in range(len(index)):
        expected, got = from_tiffs[item], from_store[item]
        assert torch.equal(expected["image"], got["image"])
        assert torch.isfinite(got["image"]).all()
        assert int(got["label"]) == int(index["label"].iloc[item])
