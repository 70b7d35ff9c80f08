"""The packed store: exact round trip, resume, skips, extension, fsspec URLs, and training from it
giving the same results as training from the GeoTIFFs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
import xarray as xr
import zarr
from torch.utils.data import DataLoader

from rapid_utils import cli, datasets, label_efficiency, splits, study, train
from rapid_utils.corpus import layout, store
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.reader import CorpusError, read_raster
from rapid_utils.train import runtime


@pytest.fixture(scope="module")
def packed(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny corpus packed in the fast layout; do not modify it."""
    out = tmp_path_factory.mktemp("store") / "tiny.zarr"
    store.pack(tiny_corpus, out, scheduler="synchronous", progress=False)
    return out


@pytest.fixture(scope="module")
def stats(tiny_corpus: Path) -> datasets.BandStats:
    return datasets.compute_band_stats(tiny_corpus, build_index(tiny_corpus, progress=False),
                                       progress=False)


def assert_same_chips(packed_store: store.PackedStore, corpus: Path) -> None:
    """Every packed chip holds the GeoTIFF's values and its nodata pixels (the store's nodata
    value in place of the file's, which uint16 may not hold)."""
    for sample_id in packed_store.index()["sample_id"]:
        for date in packed_store.dates:
            geotiff = read_raster(layout.raster_path(corpus, sample_id, date))
            chip = packed_store.read_chip(sample_id, date)
            message = f"{sample_id} {date}"
            np.testing.assert_array_equal(chip.mask, np.ma.getmaskarray(geotiff), message)
            np.testing.assert_array_equal(chip.data[~chip.mask], geotiff.data[~chip.mask],
                                          message)


def test_pack_round_trips_every_value(packed: Path, tiny_corpus: Path) -> None:
    packed_store = store.PackedStore(packed)
    assert packed_store.raw_chunks  # the fast layout is read as raw bytes
    assert packed_store.packed.all() and len(packed_store.dates) == 24
    assert_same_chips(packed_store, tiny_corpus)
    expected = build_index(tiny_corpus, progress=False)
    pd.testing.assert_frame_equal(packed_store.index(), expected)


def test_store_opens_in_xarray_with_its_variables(packed: Path, tiny_corpus: Path) -> None:
    ds = xr.open_zarr(packed, consolidated=False)
    assert ds["reflectance"].dims == ("sample", "time", "band", "y", "x")
    assert ds["reflectance"].dtype == np.uint16
    assert ds["reflectance"].shape == (24, 24, 4, 32, 32)
    assert list(ds["band"].values) == list(layout.BANDS)
    assert {"sample_id", "lon", "lat", "time"} <= set(ds.coords)
    index = build_index(tiny_corpus, progress=False).set_index("sample_id")
    ids = [str(s) for s in ds["sample_id"].values]
    np.testing.assert_array_equal(ds["label"].values, index.loc[ids, "label"].to_numpy())
    assert "split" not in ds  # a study draws its own split
    # per-band statistics: exact over every pixel of the default split's training samples
    default = splits.assign_splits(pd.DataFrame({"sample_id": ids, "label": ds["label"].values}),
                                   by="site", seed=0)
    training = default.to_numpy() == "train"
    assert ds.attrs["nodata"] == store.SIGNED_NODATA_IN_STORE  # int16's -32768, as uint16
    reflectance = ds["reflectance"].values
    valid = reflectance != ds.attrs["nodata"]
    assert 0 < (~valid).mean() < 0.01  # the generator's few nodata rows, left out below
    pixels = np.ma.MaskedArray(reflectance.astype(np.float64), mask=~valid)
    np.testing.assert_allclose(ds.attrs["band_mean"], pixels[training].mean(axis=(0, 1, 3, 4)),
                               rtol=1e-9)
    np.testing.assert_allclose(ds.attrs["band_std"], pixels[training].std(axis=(0, 1, 3, 4)),
                               rtol=1e-6)
    everything = pixels.mean(axis=(0, 1, 3, 4))
    assert not np.allclose(ds.attrs["band_mean"], everything, rtol=1e-9)


def test_archive_layout_is_smaller_and_holds_the_same_values(packed: Path, tmp_path: Path,
                                                             tiny_corpus: Path) -> None:
    out = tmp_path / "archive.zarr"
    store.pack(tiny_corpus, out, layout_name="archive", scheduler="synchronous", progress=False)
    archive = store.PackedStore(out)
    assert not archive.raw_chunks  # compressed chunks go through zarr's reader
    fast = store.PackedStore(packed)
    for sample_id in fast.sample_ids[:4]:
        np.testing.assert_array_equal(archive.read(sample_id, [0, 5, 23]),
                                      fast.read(sample_id, [0, 5, 23]))
    # a batch written into a date-major buffer, as the store Dataset asks for it
    ids, times = fast.sample_ids[:3], [[4, 0], [0, 4], [9, 9]]
    by_date = np.zeros((2, 3, *fast.shape[2:]), dtype=np.uint16)
    archive.read_batch(ids, times, out=by_date.transpose(1, 0, 2, 3, 4))
    np.testing.assert_array_equal(by_date.transpose(1, 0, 2, 3, 4), fast.read_batch(ids, times))

    def size(folder: Path, pattern: str = "*") -> int:
        return sum(f.stat().st_size for f in folder.rglob(pattern) if f.is_file())

    assert size(out / "reflectance") < 0.75 * size(packed / "reflectance")
    assert size(out / "reflectance") < size(tiny_corpus / "imagery", "PF-SR/*.tif")


@pytest.mark.parametrize("date_sampling", ["random", "first", "pair", "all"])
def test_store_items_equal_geotiff_items(packed: Path, tiny_corpus: Path, stats,
                                         date_sampling: str) -> None:
    index = build_index(tiny_corpus, progress=False).iloc[::3]
    from_tiffs = datasets.open_dataset(tiny_corpus, index, stats, date_sampling=date_sampling)
    from_store = datasets.open_dataset(packed, index, stats, date_sampling=date_sampling)
    assert isinstance(from_store, datasets.PackedStoreDataset)
    for item in range(len(index)):
        torch.manual_seed(item)
        expected = from_tiffs[item]
        torch.manual_seed(item)
        got = from_store[item]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == got[key].dtype
                assert torch.equal(value, got[key]), key
            else:
                assert value == got[key], key


@pytest.mark.parametrize(("date_sampling", "raw"), [("random", False), ("pair", False),
                                                     ("pair", True), ("all", False)])
def test_batched_store_reads_equal_collated_geotiff_items(packed: Path, tiny_corpus: Path, stats,
                                                          date_sampling: str, raw: bool) -> None:
    index = build_index(tiny_corpus, progress=False)
    from_tiffs = datasets.open_dataset(tiny_corpus, index, stats, date_sampling=date_sampling)
    from_store = datasets.open_dataset(packed, index, stats, date_sampling=date_sampling, raw=raw)
    items = [5, 0, 5, 11, 2]  # repeats and any order, as a sampler draws them
    torch.manual_seed(0)
    expected = datasets.keep_batch([from_tiffs[item] for item in items])
    torch.manual_seed(0)
    got = datasets.keep_batch(from_store.__getitems__(items))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            if raw and key.startswith("image"):
                assert got[key].dtype == torch.uint16
                got[key] = from_store.normalise_batch(got[key])
            assert got[key].is_contiguous(), key
            assert torch.equal(value, got[key]), key
        else:
            assert value == got[key], key


def test_raw_batches_normalised_on_their_device_equal_cpu_items(packed: Path, tiny_corpus: Path,
                                                                stats) -> None:
    index = build_index(tiny_corpus, progress=False)
    raw = datasets.open_dataset(packed, index, stats, date_sampling="pair", raw=True)
    normalised = datasets.open_dataset(packed, index, stats, date_sampling="pair")
    # one DataLoader worker, seeded alike: the store is opened in that process, not pickled open
    raw_batch, batch = (
        next(iter(DataLoader(dataset, batch_size=8, num_workers=1, collate_fn=datasets.keep_batch,
                             generator=torch.Generator().manual_seed(0))))
        for dataset in (raw, normalised)
    )
    assert raw_batch["image"].dtype == torch.uint16
    assert raw_batch["date2"] == batch["date2"]
    for key in ("image", "image2"):
        assert torch.equal(raw.normalise_batch(raw_batch[key]), batch[key])
        assert torch.equal(runtime.to_device(raw_batch[key], torch.device("cpu"), raw), batch[key])


def test_study_from_store_equals_study_from_geotiffs(packed: Path, tiny_corpus: Path,
                                                     tmp_path: Path) -> None:
    from_tiffs = study.load_study(tiny_corpus, tmp_path / "a", stats_sites=8)
    from_store = study.load_study(packed, tmp_path / "b", stats_sites=8)
    pd.testing.assert_frame_equal(from_store.index, from_tiffs.index)
    pd.testing.assert_series_equal(from_store.split, from_tiffs.split)
    assert from_store.band_stats == from_tiffs.band_stats


def test_finetuning_from_store_gives_identical_results(packed: Path, tiny_corpus: Path,
                                                       tmp_path: Path) -> None:
    results = {}
    for name, corpus in (("tiffs", tiny_corpus), ("store", packed)):
        data = study.load_study(corpus, tmp_path / "runs", stats_sites=8)
        config = train.FinetuneConfig(arch="resnet18", epochs=1, batch_size=6)
        results[name] = train.finetune(
            config, data.corpus, data.sites("train"), data.sites("val"), data.sites("test"),
            data.band_stats, tmp_path / f"{name}.json", progress=False,
        )
    assert results["store"]["per_epoch"] == results["tiffs"]["per_epoch"]
    assert results["store"]["final"] == results["tiffs"]["final"]


def test_frozen_features_from_store_equal_those_from_geotiffs(packed: Path, tiny_corpus: Path,
                                                             tmp_path: Path) -> None:
    # The store's batched reads hand the loader a collated batch; a loader without
    # `keep_batch` fails on it (KeyError: 0), as notebook 06 did on the quick profile.
    features = {}
    for name, corpus in (("tiffs", tiny_corpus), ("store", packed)):
        data = study.load_study(corpus, tmp_path / "runs", stats_sites=8)
        features[name] = label_efficiency.frozen_features(
            data, data.sites("train"), {"random-init": "random"}, "resnet18", batch_size=4,
            progress=False)
    assert features["store"].keys() == features["tiffs"].keys()
    for name, values in features["tiffs"].items():
        np.testing.assert_array_equal(features["store"][name], values, err_msg=name)


@pytest.mark.slow
def test_temporal_pretraining_from_store_gives_identical_history(packed: Path, tiny_corpus: Path,
                                                                 tmp_path: Path) -> None:
    histories = {}
    config = train.PretrainConfig(arch="resnet18", epochs=1, batch_size=6, warmup_epochs=0,
                                  image_size=16, hidden_dim=32, projection_dim=16, knn_k=3,
                                  positives="temporal")
    for name, corpus in (("tiffs", tiny_corpus), ("store", packed)):
        data = study.load_study(corpus, tmp_path / "runs", stats_sites=8)
        histories[name] = train.pretrain(config, data.corpus, data.sites("train"),
                                         data.sites("val"), data.band_stats, tmp_path / name,
                                         progress=False)
    assert histories["store"] == histories["tiffs"]


def test_interrupted_pack_resumes_and_repacks_a_torn_sample(tiny_corpus: Path, tmp_path: Path,
                                                            packed: Path, monkeypatch) -> None:
    out = tmp_path / "resumed.zarr"
    read_sample = store._read_sample
    calls = []

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 11:
            raise KeyboardInterrupt
        return read_sample(*args)

    monkeypatch.setattr(store, "_read_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.pack(tiny_corpus, out, scheduler="synchronous", block_size=4, progress=False)
    monkeypatch.setattr(store, "_read_sample", read_sample)
    partial = store.PackedStore(out)
    assert partial.packed.sum() == 8  # two whole blocks were committed, the third was not
    # a sample marked packed whose chunk was damaged afterwards is found and repacked
    torn_row = int(np.flatnonzero(partial.packed)[2])
    chunk = out / "reflectance" / "c" / str(torn_row) / "7" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])

    report = store.pack(tiny_corpus, out, scheduler="synchronous", block_size=4, progress=False)
    assert (report.reused, report.repacked, report.packed) == (7, 1, 17)
    resumed = store.PackedStore(out)
    assert resumed.packed.all()
    assert_same_chips(resumed, tiny_corpus)
    assert (xr.open_zarr(out, consolidated=False)["checksum"].values
            == xr.open_zarr(packed, consolidated=False)["checksum"].values).all()


def test_int16_corpus_packs_negatives_as_0_and_skips_mostly_empty_sites(
        corpus_copy: Path, tmp_path: Path, caplog) -> None:
    """Only the declared nodata is missing: negative measurements are packed as 0 and counted,
    a site with a few nodata pixels is packed, one more than `max_nodata_share` nodata is not."""
    ids = build_index(corpus_copy, progress=False)["sample_id"].tolist()
    dark, empty = ids[3], ids[6]
    dates = layout.monthly(layout.pf_dates())
    path = layout.raster_path(corpus_copy, dark, dates[0])
    with rasterio.open(path) as src:
        profile, data = src.profile, src.read()
    assert data.dtype == np.int16 and profile["nodata"] == -32768
    data = np.maximum(data, 1)
    data[3, 4:6, 4:6] = -7  # four dark pixels
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    for date in dates[:3]:  # 3 of 24 dates empty: 12.5 % of the site
        path = layout.raster_path(corpus_copy, empty, date)
        with rasterio.open(path) as src:
            profile, data = src.profile, src.read()
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.full_like(data, -32768))
    out = tmp_path / "s.zarr"
    with caplog.at_level("INFO"):
        report = store.pack(corpus_copy, out, scheduler="synchronous", progress=False)
    packed_store = store.PackedStore(out)
    assert report.skipped["sample_id"].tolist() == [empty]
    assert "nodata/NaN, more than the 10% allowed" in report.skipped["reason"][0]
    assert report.clipped_negative >= 4 and "clipped to 0" in caplog.text
    chip = packed_store.read_chip(dark, dates[0])
    assert (chip.data[3, 4:6, 4:6] == 0).all() and not chip.mask[3, 4:6, 4:6].any()
    assert_same_chips(packed_store, corpus_copy)
    lenient = store.pack(corpus_copy, tmp_path / "lenient.zarr", scheduler="synchronous",
                         progress=False, max_nodata_share=0.2)
    assert lenient.skipped.empty


def test_corrupt_sample_is_skipped_and_recorded(corpus_copy: Path, tmp_path: Path,
                                                caplog) -> None:
    bad = build_index(corpus_copy, progress=False)["sample_id"][4]
    raster = layout.raster_path(corpus_copy, bad, layout.monthly(layout.pf_dates())[3])
    raster.write_bytes(raster.read_bytes()[:300])
    out = tmp_path / "s.zarr"
    assert cli.main(["pack", "--corpus", str(corpus_copy), "--out", str(out),
                     "--scheduler", "synchronous"]) == 0
    packed_store = store.PackedStore(out)
    skipped = packed_store.skipped()
    assert skipped["sample_id"].tolist() == [bad]
    assert skipped["path"].tolist() == [str(raster)]
    assert "corrupt or truncated" in skipped["reason"][0]
    assert bad in caplog.text
    assert bad not in packed_store.index()["sample_id"].tolist()
    assert len(packed_store.index()) == 23
    with pytest.raises(store.StoreError, match=f"{bad} was not packed"):
        packed_store.read(bad, [0])
    # a repaired site is packed by the next run, and leaves the skipped list
    shutil.copy(layout.raster_path(corpus_copy, bad, layout.monthly(layout.pf_dates())[4]),
                raster)
    report = store.pack(corpus_copy, out, scheduler="synchronous", progress=False)
    assert (report.packed, report.reused, len(report.skipped)) == (1, 23, 0)
    assert store.PackedStore(out).skipped().empty


def test_pack_extends_a_store_with_new_sites(corpus_copy: Path, tmp_path: Path,
                                             packed: Path) -> None:
    table_path = corpus_copy / layout.LABELS_CSV
    full = table_path.read_bytes()
    table = pd.read_csv(table_path)
    with gzip.open(table_path, "wt") as fh:
        table.iloc[:16].to_csv(fh, index=False)
    out = tmp_path / "grow.zarr"
    store.pack(corpus_copy, out, scheduler="synchronous", progress=False)
    assert len(store.PackedStore(out).index()) == 16
    table_path.write_bytes(full)
    report = store.pack(corpus_copy, out, scheduler="threads", workers=2, progress=False)
    assert (report.reused, report.packed) == (16, 8)
    grown = store.PackedStore(out)
    pd.testing.assert_frame_equal(grown.index().drop(columns="geometry"),
                                  store.PackedStore(packed).index().drop(columns="geometry"))
    assert_same_chips(grown, corpus_copy)


def test_an_older_store_with_a_split_variable_still_opens_and_grows(corpus_copy: Path,
                                                                    tmp_path: Path) -> None:
    table_path = corpus_copy / layout.LABELS_CSV
    full, table = table_path.read_bytes(), pd.read_csv(table_path)
    with gzip.open(table_path, "wt") as fh:
        table.iloc[:16].to_csv(fh, index=False)
    out = tmp_path / "old.zarr"
    store.pack(corpus_copy, out, scheduler="synchronous", progress=False)
    legacy = xr.Dataset({"split": ("sample", np.array(["train", "val"] * 8, dtype=object))},
                        attrs=dict(zarr.open_group(out, mode="r").attrs))
    legacy.to_zarr(out, mode="a", consolidated=False)  # what stores packed before held
    assert len(store.PackedStore(out).index()) == 16
    table_path.write_bytes(full)
    store.pack(corpus_copy, out, scheduler="synchronous", progress=False)
    assert len(store.PackedStore(out).index()) == 24
    assert "split" not in xr.open_zarr(out, consolidated=False)


def test_pack_refuses_other_options_on_an_existing_store(packed: Path, tiny_corpus: Path) -> None:
    with pytest.raises(store.StoreError, match="layout 'fast', not 'archive'"):
        store.pack(tiny_corpus, packed, layout_name="archive", progress=False)
    with pytest.raises(ValueError, match="ends in .zarr"):
        store.pack(tiny_corpus, packed.with_suffix(".h5"), progress=False)


def test_store_opens_from_an_fsspec_url(packed: Path, tiny_corpus: Path, stats) -> None:
    memory = fsspec.filesystem("memory")
    memory.put(str(packed), "/tiny.zarr", recursive=True)
    try:
        url = "memory://tiny.zarr"
        remote = store.PackedStore(url)
        local = store.PackedStore(packed)
        assert remote.raw_chunks
        sample_id = local.sample_ids[3]
        np.testing.assert_array_equal(remote.read(sample_id, [1, 2]), local.read(sample_id, [1, 2]))
        ids, times = local.sample_ids[:4], [[0, 7], [7, 0], [3, 3], [23, 1]]
        np.testing.assert_array_equal(remote.read_batch(ids, times), local.read_batch(ids, times))
        index = remote.index()
        item = datasets.open_dataset(url, index, stats, date_sampling="first")[0]
        assert torch.equal(item["image"],
                           datasets.open_dataset(packed, index, stats, "first")[0]["image"])
    finally:
        memory.rm("/tiny.zarr", recursive=True)


@pytest.mark.slow
def test_pack_on_a_dask_distributed_scheduler(tiny_corpus: Path, tmp_path: Path,
                                              packed: Path) -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        out = tmp_path / "cluster.zarr"
        report = store.pack(tiny_corpus, out, address=cluster.scheduler_address, progress=False)
    assert report.packed == 24
    assert (xr.open_zarr(out, consolidated=False)["checksum"].values
            == xr.open_zarr(packed, consolidated=False)["checksum"].values).all()


def test_missing_or_torn_chunk_names_the_file_and_the_fix(packed: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(packed, damaged)
    chunk = damaged / "reflectance" / "c" / "2" / "5" / "0" / "0" / "0"
    chunk.unlink()
    opened = store.PackedStore(damaged)
    with pytest.raises(store.StoreError, match=r"c/2/5/0/0/0 is missing.*rapid-utils pack"):
        opened.read_batch(opened.sample_ids[:3], [[5], [5], [5]])
    torn = damaged / "reflectance" / "c" / "1" / "3" / "0" / "0" / "0"
    torn.write_bytes(torn.read_bytes()[:100])
    with pytest.raises(store.StoreError, match=r"c/1/3/0/0/0 holds 100 bytes.*rapid-utils pack"):
        opened.read(opened.sample_ids[1], [3])


def test_a_damaged_chunk_in_a_batched_read_replaces_only_its_sample(
    packed: Path, tiny_corpus: Path, stats, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(packed, damaged)
    index = build_index(tiny_corpus, progress=False)
    opened = store.PackedStore(damaged)
    bad = index["sample_id"].iloc[2]
    (damaged / "reflectance" / "c" / str(opened.row(bad)) / "0" / "0" / "0" / "0").unlink()
    clean = datasets.open_dataset(packed, index, stats, date_sampling="first")
    dataset = datasets.open_dataset(damaged, index, stats, date_sampling="first")
    items = [0, 2, 5]
    batch = datasets.keep_batch(dataset.__getitems__(items))
    expected = datasets.keep_batch(clean.__getitems__(items))
    assert batch["image"].shape == expected["image"].shape
    assert batch["unreadable"][0] == batch["unreadable"][2] == ""
    assert batch["unreadable"][1].startswith(f"{bad}: ") and "is missing" in batch[
        "unreadable"][1]
    assert batch["sample_id"][1] != bad  # a replacement, drawn deterministically
    for position in (0, 2):  # the readable samples are what a clean store gives
        assert torch.equal(batch["image"][position], expected["image"][position])


def test_float_rasters_with_a_nan_nodata_tag_are_refused_up_front(corpus_copy: Path,
                                                                  tmp_path: Path) -> None:
    rasters = sorted(corpus_copy.glob(f"**/{layout.PF_SR}/*.tif"))
    for path in rasters:  # reflectance as float32 with NaN nodata, as some exports write it
        with rasterio.open(path) as src:
            profile, data = src.profile, src.read().astype("float32") / 10000
        with rasterio.open(path, "w", **(profile | {"dtype": "float32", "nodata": np.nan})) as dst:
            dst.write(data)
    with pytest.raises(CorpusError, match=r"holds float32 values; a packed store holds integer"):
        store.pack(corpus_copy, tmp_path / "float.zarr", scheduler="synchronous", progress=False)


def test_missing_store_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(store.StoreError, match="rapid-utils pack"):
        store.PackedStore(tmp_path / "none.zarr")
