"""Chips corpora: the example generator, spec, index, reader, class map, errors, training."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from rapid_utils import cli, datasets, models, notebook_batch, paths, results, study, train
from rapid_utils.corpus import chips
from rapid_utils.corpus.reader import BandCountError, RasterReadError
from rapid_utils.corpus.synthetic_chips import S2_BANDS, generate_example_chips
from rapid_utils.datasets import open_dataset

CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation")  # the generator's first three


@pytest.fixture(scope="session")
def chips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 8 chips and 6 unlabelled chips: 13-band uint16 GeoTIFFs of 64 px."""
    return generate_example_chips(tmp_path_factory.mktemp("chips") / "eurosat", per_class=8,
                                  n_unlabelled=6, classes=3, seed=1, progress=False)


@pytest.fixture
def chips_copy(chips_root: Path, tmp_path: Path) -> Path:
    """A private copy of the chips folder, for tests that damage it."""
    return Path(shutil.copytree(chips_root, tmp_path / "eurosat"))


def make_spec(root: Path, **fields) -> chips.ChipsSpec:
    values = {"root": root, "bands": (2, 3, 4, 8),
              "unlabelled": (chips.ChipSource(root / "unlabelled"),)} | fields
    return chips.ChipsSpec(**values)


def test_example_chips_have_eurosat_format(chips_root: Path) -> None:
    assert sorted(p.name for p in chips_root.iterdir() if p.is_dir()) == [*CLASSES, "unlabelled"]
    with rasterio.open(chips_root / "Forest" / "Forest_1.tif") as src:
        assert (src.count, src.height, src.width, src.dtypes[0]) == (13, 64, 64, "uint16")
        assert src.descriptions == S2_BANDS and src.crs.to_epsg() == 32632
        nir, red = src.read(8).astype(float), src.read(4).astype(float)
    assert np.mean((nir - red) / (nir + red)) > 0.5  # a forest is green in NDVI


def test_index_reads_classes_from_folders_and_keeps_unlabelled_apart(chips_root: Path) -> None:
    found = chips.build_chips_index(make_spec(chips_root), progress=False)
    labelled, unlabelled, classes = found.labelled, found.unlabelled, found.classes
    assert classes == CLASSES
    assert len(labelled) == 24 and len(unlabelled) == 6
    assert (labelled.groupby("label_name").size() == 8).all()
    assert list(labelled["label"].map(dict(enumerate(classes)))) == list(labelled["label_name"])
    assert (unlabelled["label"] == chips.UNLABELLED).all()
    assert labelled["sample_id"].iloc[0] == "AnnualCrop/AnnualCrop_1.tif"
    assert unlabelled["sample_id"].iloc[0] == "unlabelled/chip_1.tif"


def test_bands_by_index_and_by_description_read_the_same_scaled_values(chips_root: Path) -> None:
    path = chips_root / "Forest" / "Forest_2.tif"
    by_index = chips.read_chip(path, make_spec(chips_root))
    by_name = chips.read_chip(path, make_spec(chips_root, bands=("b02", "B03", "B04", "B08")))
    np.testing.assert_array_equal(by_index.data, by_name.data)
    with rasterio.open(path) as src:
        raw = src.read([2, 3, 4, 8]).astype(np.float32)
    np.testing.assert_allclose(by_index.data, raw)  # scale 10000: stored units unchanged
    halved = chips.read_chip(path, make_spec(chips_root, scale=20000.0))
    np.testing.assert_allclose(halved.data, raw / 2)
    nir_first = chips.read_chip(path, make_spec(chips_root, bands=(8, 3, 4, 2)))
    np.testing.assert_array_equal(nir_first.data[0], by_index.data[3])


def test_class_map_merges_into_poster_classes(chips_root: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "map.yaml"
    mapping.write_text("AnnualCrop: agricultural\nHerbaceousVegetation: agricultural\n"
                       "Forest: forest\n")
    spec = make_spec(chips_root, class_map=chips.read_class_map(str(mapping), tmp_path))
    found = chips.build_chips_index(spec, progress=False)
    labelled, classes = found.labelled, found.classes
    assert classes == ("agricultural", "forest")  # poster order, only the classes used
    assert labelled.groupby("label_name").size().to_dict() == {"agricultural": 16, "forest": 8}
    assert set(labelled.loc[labelled["label"] == 1, "source_class"]) == {"Forest"}
    partial = make_spec(chips_root, class_map={"AnnualCrop": "agricultural"})
    with pytest.raises(chips.ChipsError, match=r"\['Forest', 'HerbaceousVegetation'\] are "
                                               "missing from the class map"):
        chips.build_chips_index(partial, progress=False)
    with pytest.raises(chips.ChipsError, match="not poster classes"):
        make_spec(chips_root, class_map={"Forest": "woodland"})


def test_csv_labels_and_unlabelled_rows(chips_root: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nForest/Forest_1.tif,trees\nAnnualCrop/AnnualCrop_1.tif,crops\n"
                   "Forest/Forest_2.tif,trees\n")
    found = chips.build_chips_index(make_spec(chips_root, labels_csv=csv), progress=False)
    labelled, classes = found.labelled, found.classes
    assert classes == ("crops", "trees")
    assert labelled.set_index("sample_id")["label_name"].to_dict() == {
        "Forest/Forest_1.tif": "trees", "AnnualCrop/AnnualCrop_1.tif": "crops",
        "Forest/Forest_2.tif": "trees"}
    csv.write_text("path,label\nForest/Forest_1.tif,trees\nForest/Forest_2.tif,\n")
    with pytest.raises(chips.ChipsError, match=r"1 row\(s\) without a label \(lines \[3\].*"
                                               "Forest_2.tif"):
        chips.build_chips_index(make_spec(chips_root, labels_csv=csv), progress=False)


def test_clear_errors_for_bad_chips(chips_copy: Path) -> None:
    spec = make_spec(chips_copy)
    with pytest.raises(BandCountError, match="AnnualCrop_1.tif has 13 bands, fewer than band 14"):
        chips.build_chips_index(make_spec(chips_copy, bands=(2, 3, 4, 14)), progress=False)
    with pytest.raises(BandCountError, match="no band described 'NIR'.*1-based indexes"):
        chips.build_chips_index(make_spec(chips_copy, bands=(2, 3, 4, "NIR")), progress=False)

    small = chips_copy / "Forest" / "Forest_3.tif"
    with rasterio.open(small) as src:
        profile = src.profile | {"width": 32, "height": 32}
        data = src.read(window=((0, 32), (0, 32)))
    with rasterio.open(small, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(chips.ChipsError, match=r"different sizes \(32x32 px: 1 chips, e.g.*"
                                               r"Forest_3.tif; 64x64 px: 29.*set `size`"):
        chips.build_chips_index(spec, progress=False)
    resized = chips.build_chips_index(make_spec(chips_copy, size=48), progress=False)
    assert len(resized.labelled) == 24
    with pytest.raises(chips.ChipsError, match="Forest_3.tif is 32x32 px, smaller than size 48"):
        chips.build_chips_index(make_spec(chips_copy, size=48, resize="crop"), progress=False)
    small.unlink()

    (chips_copy / "Pasture").mkdir()
    with pytest.raises(chips.ChipsError, match="class folder .*Pasture holds no chips"):
        chips.build_chips_index(spec, progress=False)
    (chips_copy / "Pasture").rmdir()

    photo = chips_copy / "Forest" / "holiday.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 not a chip")
    with pytest.raises(chips.ChipsError, match="holiday.jpg is not a GeoTIFF chip"):
        chips.build_chips_index(spec, progress=False)
    photo.unlink()
    (chips_copy / "Forest" / "notes.tif").write_text("this is text")
    with pytest.raises(RasterReadError, match="cannot read .*notes.tif as a raster"):
        chips.build_chips_index(spec, progress=False)


def test_a_chip_unreadable_after_indexing_is_replaced_and_named(chips_copy: Path) -> None:
    spec = make_spec(chips_copy)
    found = chips.build_chips_index(spec, progress=False)
    stats = chips.compute_band_stats(spec, found.labelled)
    dataset = datasets.ChipsDataset(spec, found.labelled, stats)
    clean = dataset[1]
    assert clean["unreadable"] == ""
    Path(found.labelled["path"].iloc[1]).write_text("truncated")  # damaged after indexing
    replaced = dataset[1]
    bad = found.labelled["sample_id"].iloc[1]
    assert replaced["unreadable"].startswith(f"{bad}: cannot read")
    assert replaced["sample_id"] != bad and replaced["image"].shape == clean["image"].shape
    assert replaced["sample_id"] == dataset[1]["sample_id"]  # the same replacement each time


def test_spec_file_round_trip_and_bad_values(chips_root: Path, tmp_path: Path) -> None:
    spec = make_spec(chips_root, size=32, class_map={c: "forest" for c in CLASSES})
    folder = tmp_path / "corpus"
    spec.save(folder / chips.SPEC_FILE)
    assert chips.is_chips_corpus(folder) and chips.is_chips_corpus(folder / chips.SPEC_FILE)
    assert chips.load_spec(folder) == spec
    assert not chips.is_chips_corpus(chips_root)  # a bare folder needs a spec
    with pytest.raises(chips.ChipsError, match="bands must name 4 bands"):
        make_spec(chips_root, bands=(2, 3, 4))
    with pytest.raises(chips.ChipsError, match="resize must be one of"):
        make_spec(chips_root, resize="nearest")
    (tmp_path / "typo.yaml").write_text(f"root: {chips_root}\nbands: [2, 3, 4, 8]\nsise: 32\n")
    with pytest.raises(chips.ChipsError, match=r"unknown keys \['sise'\]"):
        chips.load_spec(tmp_path / "typo.yaml")


def write_l2a_like_folder(chips_root: Path, folder: Path) -> Path:
    """4-band chips described B02..B08 at a third of the labelled chips' level, and one chip
    of zeros: an L2A-like source stored unlike the 13-band labelled chips."""
    folder.mkdir()
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint16"}
    for k, path in enumerate(sorted((chips_root / "Forest").glob("*.tif"))[:4]):
        with rasterio.open(path) as src:
            values = src.read([2, 3, 4, 8]) // 3
        with rasterio.open(folder / f"chip_{k}.tif", "w", **profile) as dst:
            dst.write(values)
            dst.descriptions = ("B02", "B03", "B04", "B08")
    with rasterio.open(folder / "empty.tif", "w", **profile) as dst:
        dst.write(np.zeros((4, 64, 64), dtype="uint16"))
        dst.descriptions = ("B02", "B03", "B04", "B08")
    return folder


def test_unlabelled_sources_with_own_bands_per_source_statistics_and_empty_chips(
        chips_root: Path, tmp_path: Path) -> None:
    l2a = write_l2a_like_folder(chips_root, tmp_path / "l2a")
    sources = (chips.ChipSource(chips_root / "unlabelled"),
               chips.ChipSource(l2a, bands=("B02", "B03", "B04", "B08")))
    spec = make_spec(chips_root, unlabelled=sources, normalisation="per-source",
                     pretrain_on_labelled_images=True)
    assert chips.load_spec(spec.save(tmp_path / "chips.yaml")) == spec

    found = chips.build_chips_index(spec, progress=False)
    assert found.unlabelled.groupby("source").size().to_dict() == {"l2a": 4, "unlabelled": 6}
    assert found.skipped["path"].tolist() == [str(l2a / "empty.tif")]  # listed, never indexed
    assert "l2a:chip_0.tif" in set(found.unlabelled["sample_id"])
    assert (found.labelled["source"] == chips.LABELLED_SOURCE).all()

    split = pd.Series("train", index=found.labelled.index)
    stats = chips.study_band_stats(spec, found.labelled, split, found.unlabelled, n_chips=100)
    l2a_pixels = np.stack([chips.read_chip(l2a / f"chip_{k}.tif", spec, "l2a")
                           for k in range(4)])
    np.testing.assert_allclose(stats.per_source["l2a"][0], l2a_pixels.mean(axis=(0, 2, 3)),
                               rtol=1e-5)
    labelled_mean = np.asarray(stats.mean)
    assert (np.asarray(stats.per_source["l2a"][0]) < 0.5 * labelled_mean).all()
    pooled = chips.study_band_stats(dataclasses.replace(spec, normalisation="pooled"),
                                    found.labelled, split, found.unlabelled, n_chips=100)
    assert pooled.per_source == {} and pooled.fingerprint() != stats.fingerprint()

    dataset = datasets.ChipsDataset(spec, found.unlabelled[found.unlabelled["source"] == "l2a"],
                                    stats)
    normalised = torch.stack([dataset[k]["image"] for k in range(len(dataset))])
    np.testing.assert_allclose(normalised.mean(dim=(0, 2, 3)), 0.0, atol=1e-4)  # its own stats

    data = study.load_study(tmp_path / "chips.yaml", tmp_path / "runs", stats_sites=100)
    assert len(data.pretraining_sites()) == 24 + 10  # every labelled image, no label beyond train
    pretraining_only = data.pretraining_sites().iloc[len(data.sites("train")):]
    assert (pretraining_only["label"] == chips.UNLABELLED).all()
    assert datasets.BandStats.load(tmp_path / "runs" / paths.BAND_STATS_FILE) == data.band_stats
    # the same split normalised another way is not read from the stored file
    dataclasses.replace(spec, normalisation="pooled").save(tmp_path / "chips.yaml")
    pooled_study = study.load_study(tmp_path / "chips.yaml", tmp_path / "runs", stats_sites=100)
    assert pooled_study.band_stats.per_source == {}
    assert "pooled" in pooled_study.band_stats.recipe
    assert study.load_study(tmp_path / "chips.yaml", tmp_path / "runs",
                            stats_sites=50).band_stats.recipe.endswith("n_chips=50 seed=0")
    # "none": the pool holds no labelled chip (each is a test chip in some repeat of notebook 06)
    assert spec.pretrain_on_labelled_images == "all"  # true, as older specs wrote it
    dataclasses.replace(spec, pretrain_on_labelled_images="none").save(tmp_path / "chips.yaml")
    apart = study.load_study(tmp_path / "chips.yaml", tmp_path / "runs", stats_sites=100)
    assert set(apart.pretraining_sites()["sample_id"]) == set(found.unlabelled["sample_id"])
    assert "labelled_images=True" in data.band_stats.recipe  # older recipes read unchanged
    with pytest.raises(chips.ChipsError, match="pretrain_on_labelled_images must be one of"):
        dataclasses.replace(spec, pretrain_on_labelled_images="some")


def test_study_and_dataset_on_a_chips_spec(chips_root: Path, tmp_path: Path) -> None:
    spec_file = make_spec(chips_root, size=32).save(tmp_path / "chips.yaml")
    data = study.load_study(spec_file, tmp_path / "runs", seed=0, stats_sites=100)
    indexed = study.index_corpus(spec_file)
    assert indexed.n_sites == 24 + 6 and indexed.location == data.corpus
    again = study.load_study(spec_file, tmp_path / "runs", seed=0, stats_sites=100,
                             indexed=indexed)
    assert again.index.equals(data.index) and again.band_stats == data.band_stats
    assert data.class_names == CLASSES
    assert data.split_sizes().to_dict() == {"train": 18, "val": 3, "test": 3}
    assert len(data.pretraining_sites()) == 18 + 6
    assert data.band_stats.n_sites == 24  # training and unlabelled chips only
    assert (tmp_path / "runs" / paths.BAND_STATS_FILE).is_file()
    with pytest.raises(chips.ChipsError, match="split by chip"):
        study.load_study(spec_file, tmp_path / "runs", split_by="tile")

    train_chips = data.sites("train")
    pair = open_dataset(spec_file, train_chips, data.band_stats, date_sampling="pair")
    item = pair[0]
    assert item["image"].shape == (4, 32, 32) and torch.equal(item["image"], item["image2"])
    assert int(item["label"]) == train_chips["label"].iloc[0]
    assert open_dataset(spec_file, train_chips, data.band_stats, "all")[0]["image"].shape == (
        1, 4, 32, 32)
    images = torch.stack([pair[i]["image"] for i in range(len(pair))])
    assert images.mean(dim=(0, 2, 3)).abs().max() < 0.3  # normalised by the band statistics
    cropped = datasets.ChipsDataset(make_spec(chips_root, size=32, resize="crop"), train_chips,
                                    data.band_stats)
    full = datasets.ChipsDataset(make_spec(chips_root), train_chips, data.band_stats)
    assert torch.equal(cropped[0]["image"], full[0]["image"][:, 16:48, 16:48])


def test_one_epoch_byol_and_fine_tune_on_chips(chips_root: Path, tmp_path: Path) -> None:
    mapping = {"AnnualCrop": "agricultural", "Forest": "forest", "HerbaceousVegetation": "shrub"}
    spec_file = make_spec(chips_root, size=16, class_map=mapping).save(tmp_path / "chips.yaml")
    data = study.load_study(spec_file, tmp_path / "runs", stats_sites=50)
    byol_dir = tmp_path / "byol"
    history = train.pretrain(
        train.PretrainConfig(arch="resnet18", epochs=1, batch_size=8, image_size=16,
                             hidden_dim=32, projection_dim=16, knn_sites=50),
        spec_file, data.pretraining_sites(), data.sites("val"), data.band_stats, byol_dir,
        progress=False)
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert 0 <= history[0]["knn_accuracy"] <= 1
    results_path = tmp_path / "results" / "run.json"
    config = train.FinetuneConfig(arch="resnet18", epochs=1, batch_size=8,
                                  init=f"byol:{byol_dir / train.CHECKPOINT_FILE}")
    run = train.finetune(config, spec_file, data.sites("train"), data.sites("val"),
                         data.sites("test"), data.band_stats, results_path, progress=False,
                         class_names=data.class_names, model_dir=tmp_path / "model")
    assert run["classes"] == ["agricultural", "forest", "shrub"]
    # 64 px chips at 10 m resampled to 16 px: the model sees 40 m pixels
    assert run["normalisation"]["gsd_m"] == pytest.approx(40.0)
    assert run["normalisation"]["input_size"] == 16
    model, normalisation = models.load_pretrained(run["model"]["path"])
    assert model.fc.out_features == 3 and normalisation.gsd_m == pytest.approx(40.0)
    final = run["final"]["test"]
    assert list(final["precision"]) == run["classes"] and final["n"] == 3
    assert np.asarray(final["confusion_matrix"]).shape == (3, 3)
    with pytest.raises(ValueError, match="unlabelled ones"):
        train.finetune(config, spec_file, data.pretraining_sites(), data.sites("val"),
                       data.sites("test"), data.band_stats, tmp_path / "other.json",
                       progress=False, class_names=data.class_names)
    summary = results.summary_table(results.load_results(results_path.parent))
    assert summary.index.tolist() == ["byol-100%"]
    assert "precision_shrub" in summary.columns and "precision_water" not in summary.columns


@pytest.mark.slow
def test_chips_profile_runs_the_whole_batch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAPID_HOME", str(tmp_path))
    override = tmp_path / "tiny.yaml"
    class_map = paths.classmaps_dir() / "eurosat-to-poster.yaml"
    override.write_text(
        "example_chips_classes: 3\nexample_chips_per_class: 12\nexample_chips_unlabelled: 8\n"
        f"chips_size: 16\nchips_class_map: {class_map}\nimage_size: 16\npretrain_epochs: 1\n"
        "pretrain_batch_size: 8\nhidden_dim: 32\nprojection_dim: 16\nfinetune_epochs: 1\n"
        "finetune_batch_size: 8\nmin_samples_per_epoch: 0\nseeds: [0, 1]\nstats_sites: 20\n"
        "hist_sites: 4\nscenarios: [byol-100%, imagenet-100%]\n")
    outcomes = notebook_batch.reproduce("chips-example", (override,))
    assert [run.status for run in outcomes] == ["done"] * 4 + ["skipped"] * 2 + ["done"] * 2
    assert outcomes[0].name == "01b_chips_overview"
    spec = chips.load_spec(paths.chips_spec_path("chips-example"))
    assert spec.root == paths.example_chips_dir("chips-example") and spec.size == 16
    assert spec.class_map["HerbaceousVegetation"] == "shrub"
    figures = paths.figures_dir("chips-example")
    for name in ("chip_examples", "split_sizes", "byol_embedding_augment_seed0",
                 "fig4_accuracy_per_epoch", "fig5_class_precision_recall"):
        assert (figures / f"{name}.png").stat().st_size > 5_000, name
    table = pd.read_csv(figures / "results.csv", index_col="scenario")
    assert table.index.tolist() == ["byol-100%"] and table.loc["byol-100%", "n_seeds"] == 2
    assert [c for c in table.columns if c.startswith("recall_")] == [
        "recall_agricultural", "recall_forest", "recall_shrub"]


def test_cli_writes_example_chips_and_refuses_foreign_folders(tmp_path: Path) -> None:
    out = tmp_path / "example"
    assert cli.main(["example-chips", "--out", str(out), "--classes", "2", "--per-class", "3",
                     "--unlabelled", "0", "--size", "16"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tif")) == [
        "AnnualCrop/AnnualCrop_1.tif", "AnnualCrop/AnnualCrop_2.tif",
        "AnnualCrop/AnnualCrop_3.tif", "Forest/Forest_1.tif", "Forest/Forest_2.tif",
        "Forest/Forest_3.tif"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    assert cli.main(["example-chips", "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "keep"
