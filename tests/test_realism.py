"""The realism table: chips at one scale, path offsets, the CSV, the real-against-real
splits, and the measurement end to end (the statistics themselves: test_chip_statistics)."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from rapid_utils import chip_statistics, evaluation, labels, plots, realism
from rapid_utils.corpus.synthetic_chips import generate_example_chips

REAL_S2 = realism.real_s2_dir()


def test_path_offsets_are_the_dark_object_difference_and_lift_surface_to_l1c() -> None:
    rng = np.random.default_rng(0)
    surface = rng.uniform(0.0, 0.3, (50, 4, 8, 8))
    path = np.array([0.06, 0.03, 0.015, 0.002])
    top = surface + path[None, :, None, None]  # a set seen through a known atmosphere
    as_set = {name: realism.ChipSet(name, images, np.full(50, ""), 10.0, 8)
              for name, images in (("l1c", top), ("l2a", surface))}
    offsets = realism.path_offsets(as_set["l1c"], as_set["l2a"])
    assert offsets == pytest.approx(path, abs=1e-9)
    assert realism.path_offsets(as_set["l2a"], as_set["l1c"]) == pytest.approx(np.zeros(4))
    vegetation = np.array([0.02, 0.05, 0.03, 0.40])[None, :, None, None] * np.ones((1, 4, 2, 2))
    lifted = chip_statistics.ndvi(vegetation + offsets[None, :, None, None])
    assert np.all(lifted < chip_statistics.ndvi(vegetation))  # path radiance lowers NDVI


def test_resampling_to_10_m_averages_areas() -> None:
    image = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    coarse = realism.resample_to_gsd(image, gsd_m=5.0)
    assert coarse[0, 0] == pytest.approx(image[0, 0].reshape(3, 2, 3, 2).mean(axis=(1, 3)))
    assert realism.resample_to_gsd(np.ones((1, 4, 200, 200)), 3.0).shape == (1, 4, 60, 60)
    assert realism.resample_to_gsd(np.ones((1, 4, 64, 64)), 3.0).shape[-1] == 19
    assert realism.centre_crop(np.ones((2, 4, 64, 64)), 19).shape == (2, 4, 19, 19)


def test_compare_decides_within_by_the_tolerance() -> None:
    real = np.array([1.0, 1.0])
    rows = realism.compare("x", np.array([1.02, 1.2]), real, np.array([0.05, 0.05]), ["a", "b"])
    assert rows["within"].tolist() == [True, False]
    assert rows["distance"].to_numpy() == pytest.approx([0.02, 0.2])


def test_the_class_signal_probe_gives_the_numbers_of_its_former_fixed_c_pipeline() -> None:
    # out_of_fold_correct used cross_val_predict(StandardScaler + LogisticRegression(C=1))
    rng = np.random.default_rng(0)
    classes = np.array(["forest", "water", "shrub"] * 8, object)
    y = np.unique(classes, return_inverse=True)[1]
    images = rng.normal(size=(len(classes), 4, 6, 6)) + 0.1 * y[:, None, None, None]
    chipset = realism.ChipSet("toy", images, classes, 10.0, 6)
    features = evaluation.imagestats_features(images)
    former = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                               features, y, cv=StratifiedKFold(5, shuffle=True, random_state=3))
    correct = realism.out_of_fold_correct(chipset, seed=3, cnn_epochs=1)
    np.testing.assert_array_equal(correct["imagestats"], former == y)
    assert 0 < correct["imagestats"].mean() < 1  # the case is not trivial


def test_matched_samples_have_the_same_classes_and_counts() -> None:
    def chipset(classes: list[str]) -> realism.ChipSet:
        return realism.ChipSet("x", np.zeros((len(classes), 4, 4, 4)), np.array(classes, object),
                               10.0, 4)

    embedded = chipset(["forest"] * 5 + ["water"] * 3 + ["bare"] * 4 + ["shrub"])
    real = chipset(["forest"] * 2 + ["water"] * 6 + ["shrub"] * 4)
    a, b = realism.matched_samples(embedded, real)
    assert sorted(a.classes) == sorted(b.classes) == ["forest"] * 2 + ["water"] * 3


def test_realism_csv_has_the_columns_and_is_written_atomically(tmp_path: Path) -> None:
    table = realism.compare("reflectance_q50", np.array([0.1]), np.array([0.12]),
                            np.array([0.01]), ["blue"], unit="reflectance")
    path = realism.write_realism_csv(table, tmp_path / "figures")
    assert path == tmp_path / "figures" / realism.CSV_NAME
    written = pd.read_csv(path)
    assert list(written.columns) == list(realism.COLUMNS)
    assert written.loc[0, "class"] == "all" and not written.loc[0, "within"]
    assert [p.name for p in path.parent.iterdir()] == [realism.CSV_NAME]  # no temp file left
    with pytest.raises(ValueError, match="tolerance"):
        realism.write_realism_csv(table.drop(columns="tolerance"), tmp_path)


def test_a_missing_real_folder_is_named_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(realism.RealChipsNotFoundError, match=str(tmp_path / "nowhere")):
        realism.real_chips(tmp_path / "nowhere")
    (tmp_path / "half" / realism.LABELLED_FOLDER).mkdir(parents=True)
    with pytest.raises(realism.RealChipsNotFoundError, match=realism.L2A_FOLDER):
        realism.real_chips(tmp_path / "half")


@pytest.fixture(scope="module")
def fake_real_s2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real-s2 layout with generated chips: 10 EuroSAT classes x 4 (13 bands) and an
    L2A folder of 4-band chips described B02 ... B08, one of them empty."""
    root = tmp_path_factory.mktemp("real-s2")
    labelled = generate_example_chips(root / realism.LABELLED_FOLDER, per_class=4,
                                      n_unlabelled=0, seed=2, progress=False)
    (labelled / ".example-chips.json").unlink()  # the real folder holds chips only
    pool = root / realism.L2A_FOLDER
    pool.mkdir()
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint16"}
    for k, path in enumerate(sorted(labelled.rglob("*.tif"))[:12]):
        with rasterio.open(path) as src:
            values = src.read([2, 3, 4, 8]) * (k > 0)  # the first one empty
        with warnings.catch_warnings():  # like the real L2A chips, they have no georeference
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(pool / f"test_{k}.tif", "w", **profile) as dst:
                dst.write(values)
                dst.descriptions = realism.L2A_BANDS
    return root


def test_rendered_chips_are_full_size_seeded_and_labelled_by_their_dominant_class() -> None:
    chipset = realism.rendered_chips(n_sites=6, seed=3)
    assert chipset.images.shape == (6, 4, 60, 60)  # 200 px at 3 m -> 60 px at 10 m
    assert chipset.source_side == 200 and chipset.source_gsd_m == 3.0
    assert np.isfinite(chipset.images).all() and (chipset.images >= 0).all()
    assert set(chipset.classes) <= set(labels.CLASSES)
    again = realism.rendered_chips(n_sites=6, seed=3)
    assert np.array_equal(chipset.images, again.images)
    assert list(chipset.classes) == list(again.classes)
    assert not np.array_equal(chipset.images, realism.rendered_chips(n_sites=6, seed=4).images)
    small = realism.rendered_chips(n_sites=2, seed=3, size=40)
    assert small.images.shape == (2, 4, 12, 12) and small.source_side == 40


def check_table(table: pd.DataFrame) -> None:
    assert list(table.columns) == list(realism.COLUMNS)
    assert table["within"].dtype == bool
    assert (table["tolerance"] >= 0).all() and table[["embedded", "real"]].notna().all().all()
    assert table["distance"].to_numpy() == pytest.approx(
        (table["embedded"] - table["real"]).abs().to_numpy())
    statistics = set(table["statistic"])
    assert {"reflectance_q50", "spectral_slope", "gradient_q95", "heterogeneity",
            "imagestats_accuracy", "cnn_accuracy", "spatial_signal"} <= statistics
    assert set(table["class"]) - {realism.ALL} <= set(labels.CLASSES)
    named = table.set_index("statistic")["classifier"]
    assert named["imagestats_accuracy"] == "logistic probe (C=1)"
    assert named["cnn_accuracy"].startswith("TinyCNN")


def test_measurement_end_to_end_on_a_tiny_corpus(tiny_corpus: Path, fake_real_s2: Path,
                                                 tmp_path: Path) -> None:
    embedded = realism.embedded_chips(tiny_corpus, n_sites=24, seed=0)
    assert embedded.side == 10 and embedded.source_side == 32  # 32 px at 3 m -> 10 px at 10 m
    labelled, pool = realism.real_chips(fake_real_s2, side=embedded.side, seed=0)
    assert len(labelled.images) == 40 and len(pool.images) == 11  # the empty chip is skipped
    assert set(labelled.classes) == {"agricultural", "forest", "shrub", "artificial", "water"}
    table = realism.measure_realism(embedded, labelled, pool, seed=0, cnn_epochs=2)
    check_table(table)
    assert table.equals(realism.measure_realism(embedded, labelled, pool, seed=0,
                                                cnn_epochs=2))  # seeded
    written = pd.read_csv(realism.write_realism_csv(table, tmp_path))
    assert written.shape == table.shape
    pairs = realism.example_pairs(embedded, labelled, pool, per_row=2)
    assert list(pairs)[0].startswith("all") and all(len(e) <= 2 for e, _ in pairs.values())
    for name, fig in (("chips", plots.plot_realism_chips(pairs)),
                      ("statistics", plots.plot_realism_statistics(written))):
        assert plots.save_figure(fig, tmp_path, f"realism_{name}").stat().st_size > 5_000
    with pytest.raises(ValueError, match="sides"):
        realism.measure_realism(embedded, *realism.real_chips(fake_real_s2, side=12))


@pytest.mark.skipif(not REAL_S2.is_dir(), reason=f"no real Sentinel-2 chips at {REAL_S2}")
def test_measurement_on_the_real_chips(tiny_corpus: Path) -> None:
    embedded = realism.embedded_chips(tiny_corpus, n_sites=24, seed=0)
    labelled, pool = realism.real_chips(REAL_S2, side=embedded.side, n_l2a=100, seed=0)
    assert len(labelled.images) == 199 and len(pool.images) <= 100
    table = realism.measure_realism(embedded, labelled, pool, seed=0, cnn_epochs=2)
    check_table(table)
    median = table[table["statistic"] == "reflectance_q50"].set_index("band")["real"]
    assert 0.005 < median["blue"] < median["nir"] < 0.6  # surface reflectance, vegetated


def noise_chipset(classes: list[str], seed: int, side: int = 8) -> realism.ChipSet:
    """Chips of one distribution: reflectance 0.05-0.45, NIR above red (vegetated NDVI)."""
    images = np.random.default_rng(seed).uniform(0.05, 0.25, (len(classes), 4, side, side))
    images[:, 3] += 0.2
    return realism.ChipSet("noise", images, np.array(classes, object), 10.0, side)


def test_real_against_real_measures_disjoint_halves_of_the_real_chips() -> None:
    labelled = noise_chipset(["forest"] * 8 + ["water"] * 6, seed=1)
    pool = noise_chipset([""] * 30, seed=2)
    splits = realism.real_against_real(labelled, pool, n_sample=12, n_splits=3, seed=0)
    assert sorted(splits["split"].unique()) == [0, 1, 2]
    one = splits[splits["split"] == 0]
    assert set(one["class"]) == {"all", "forest", "water"} and not one["statistic"].str.startswith(
        ("imagestats", "cnn", "spatial")).any()
    unconditional = one[one["class"] == realism.ALL]
    assert (unconditional["n_embedded"] == 12).all() and (unconditional["n_real"] == 18).all()
    forest = one[one["class"] == "forest"]
    assert (forest["n_embedded"] == 4).all() and (forest["n_real"] == 4).all()
    assert splits.equals(realism.real_against_real(labelled, pool, 12, n_splits=3, seed=0))
    assert not splits["distance"].equals(
        realism.real_against_real(labelled, pool, 12, n_splits=3, seed=1)["distance"])
    capped = realism.real_against_real(labelled, pool, n_sample=100, n_splits=1)
    assert (capped.loc[capped["class"] == realism.ALL, "n_embedded"] == 15).all()  # half at most


def test_identical_real_chips_are_within_on_every_row() -> None:
    chip = noise_chipset(["forest"], seed=3).images
    labelled = realism.ChipSet("same", np.repeat(chip, 6, axis=0), np.array(["forest"] * 6, object),
                               10.0, 8)
    pool = dataclasses.replace(labelled, classes=np.array([""] * 6, object))
    splits = realism.real_against_real(labelled, pool, n_sample=3, n_splits=2)
    assert (splits["distance"] == 0).all() and splits["within"].all()


def test_within_counts_compare_each_render_seed_on_the_real_splits_rows() -> None:
    keys = ("reflectance_q50", "ndvi_q50", "cnn_accuracy")
    measured = pd.concat([realism.compare(name, np.array([0.5]), np.array([0.4]),
                                          np.array([tolerance]), [realism.ALL])
                          for name, tolerance in zip(keys, (0.2, 0.01, 0.5), strict=True)])
    other_seed = measured.iloc[:2].assign(within=[False, False])  # no class-signal rows
    splits = pd.concat([measured.iloc[:2].assign(within=within, split=k)
                        for k, within in enumerate(([True, True], [True, False], [False, False]))])
    counts = realism.within_counts({0: measured, 3: other_seed}, splits)
    assert counts["source"].tolist() == ["embedded"] * 2 + ["real against real"] * 3
    assert counts["split"].tolist() == [0, 3, 0, 1, 2]  # render seeds, then split numbers
    assert counts["within"].tolist() == [1, 0, 2, 1, 0]  # the CNN row is not counted
    assert (counts["rows"] == 2).all()
    figure = plots.plot_within_counts(counts)
    assert figure.axes[0].get_xlabel().endswith("(of 2: band, NDVI and spatial rows)")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "embedded, render seed 0: 1" in legend
    assert "embedded, further render seeds: 0" in legend
