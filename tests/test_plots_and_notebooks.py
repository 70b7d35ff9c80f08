"""Figures (plots/), exploration helpers, split size tables, and notebooks 01, 02 and 07 end to
end."""

from __future__ import annotations

import calendar
import json
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.figure import Figure

from rapid_utils import exploration, labels, paths, plots, realism, splits, study
from rapid_utils.corpus import layout
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.datasets import BandStats

# Seed 2 gives all 7 classes in 30 sites, with forest, crop and water sites that one class
# covers for at least 60 %: what the NDVI comparison needs.
CORPUS = {"n_sites": 30, "seed": 2, "size": 32}
NOTEBOOKS = {
    "01_data_exploration": {
        "n_grid_sites": 2,
        "hist_sites": 3,
        "phenology_sites": 1,
        "stats_sites": 4,
    },
    "02_label_mapping": {"label_fractions": [0.1, 0.5, 1.0]},
    "07_realism": {
        "realism_sites": 30,  # rendered at 200 px in memory
        "realism_real_splits": 2,
        "realism_render_seeds": [3],
    },
}
FIGURES = {
    "01_data_exploration": [
        "fig1_sample_locations",
        "fig2_monthly_images",
        "band_histograms",
        "class_phenology",
    ],
    "02_label_mapping": ["class_distribution", "split_sizes"],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_corpus(
        tmp_path_factory.mktemp("explore") / "c", **CORPUS, workers=1, progress=False
    )


@pytest.fixture(scope="module")
def index(corpus: Path) -> pd.DataFrame:
    return build_index(corpus, progress=False)


def test_class_colours_and_markers_are_distinct_per_class() -> None:
    assert tuple(plots.CLASS_COLORS) == labels.CLASSES
    assert tuple(plots.CLASS_MARKERS) == labels.CLASSES
    assert len(set(plots.CLASS_COLORS.values())) == len(labels.CLASSES)
    assert len(set(plots.CLASS_MARKERS.values())) == len(labels.CLASSES)


def test_save_figure_writes_png_and_pdf(tmp_path: Path) -> None:
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    png = plots.save_figure(fig, tmp_path / "new" / "folder", "line")
    assert png == tmp_path / "new" / "folder" / "line.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert (png.parent / "line.pdf").read_bytes().startswith(b"%PDF")


def test_sample_locations_map(index: pd.DataFrame) -> None:
    fig = plots.plot_sample_locations(index)
    (ax,) = fig.axes
    assert len(ax.images) == 1  # the land/sea background
    assert len(ax.collections) == index["label_name"].nunique()  # one scatter per class
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(index)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    counts = index["label_name"].value_counts()
    assert legend == [f"{c} ({counts.get(c, 0)})" for c in labels.CLASSES]
    assert "longitude" in ax.get_xlabel() and "latitude" in ax.get_ylabel()
    # the embedded corpus says so in the title, so a copy in slides cannot pass for real data
    assert ax.get_title().startswith("Embedded synthetic corpus, not real imagery: sample loc")
    assert "RapidAI4EO" not in ax.get_title()
    named = plots.plot_sample_locations(index, corpus_name="my corpus").axes[0].get_title()
    assert named.startswith("My corpus: sample locations")


def test_corpus_name_of_reads_the_generators_record(index: pd.DataFrame, tmp_path: Path) -> None:
    assert plots.corpus_name_of(index) == plots.EMBEDDED_CORPUS_NAME
    real = index.copy()
    real.attrs = {"root": str(tmp_path)}  # a folder without SYNTHETIC.json
    assert plots.corpus_name_of(real) == plots.REAL_CORPUS_NAME
    store = tmp_path / "quick.zarr"  # a packed store keeps the record beside it
    (tmp_path / "quick.zarr.SYNTHETIC.json").write_text("{}")
    real.attrs = {"root": str(store)}
    assert plots.corpus_name_of(real) == plots.EMBEDDED_CORPUS_NAME
    real.attrs = {"root": "s3://bucket/store.zarr"}
    assert plots.corpus_name_of(real) is None  # cannot tell: the title names no corpus
    assert plots.corpus_name_of(None) is None


def test_pick_sites_by_class_is_seeded_and_covers_classes(index: pd.DataFrame) -> None:
    chosen = exploration.pick_sites_by_class(index, 5, seed=0)
    assert chosen == exploration.pick_sites_by_class(index, 5, seed=0)
    classes = index.set_index("sample_id").loc[chosen, "label"]
    assert classes.nunique() == 5 and classes.is_monotonic_increasing
    counts = index["label"].value_counts().sort_index()
    commonest = counts.sort_values(ascending=False, kind="stable")
    assert set(classes) == set(commonest.index[:5])  # the most common classes come first
    everything = exploration.pick_sites_by_class(index, 1000, seed=1)
    assert sorted(everything) == sorted(index["sample_id"])


def test_monthly_grid_has_two_rows_of_twelve_months_per_site(
    corpus: Path, index: pd.DataFrame
) -> None:
    chosen = exploration.pick_sites_by_class(index, 3, seed=0)
    series = exploration.read_monthly_series(corpus, chosen)
    fig = plots.plot_monthly_grid(series, index, year=2018)
    chips = [ax for ax in fig.axes if ax.images]
    assert len(chips) == 3 * 2 * 12
    assert len(fig.axes) == len(chips) + 3  # plus one caption panel per site
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [calendar.month_abbr[m] for m in range(1, 13)]
    pixels = np.stack([ax.images[0].get_array() for ax in chips])
    assert pixels.shape[1:] == (CORPUS["size"], CORPUS["size"], 3)
    assert pixels.min() >= 0 and pixels.max() <= 1
    captions = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
    assert all(sid in captions for sid in chosen)


def test_monthly_grid_labels_rows_marks_masked_dates_and_has_a_scale_bar(
    corpus: Path, index: pd.DataFrame
) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    chosen = exploration.pick_sites_by_class(index, 2, seed=0)
    series = exploration.read_monthly_series(corpus, chosen)
    march = list(pd.DatetimeIndex(series[chosen[0]]["time"].values).month).index(3)
    series[chosen[0]].values[march, :, :8, :8] = np.nan  # as a PF-QA mask would leave it
    fig = plots.plot_monthly_grid(series, index, year=2018)
    assert fig.get_suptitle().startswith("Embedded synthetic corpus, not real imagery: monthly")
    captions = [ax.texts[0].get_text() for ax in fig.axes if not ax.images and ax.texts
                and ax.texts[0].get_text().endswith(tuple(chosen))]
    rows = index.set_index("sample_id").loc[chosen]
    for caption, (sid, row) in zip(captions, rows.iterrows(), strict=True):
        share = exploration.dominant_share(rows.loc[[sid]]).iloc[0]
        assert caption.splitlines()[0] == f"{row['label_name']} ({share:.0%})"
        east_west = "E" if row["lon"] >= 0 else "W"  # the corpus lies north of the equator
        place = f"{row['lat']:.2f}°N, {abs(row['lon']):.2f}°{east_west}"
        assert caption.splitlines()[1] == place
    # a frame on exactly the dates with masked pixels (in both rows), the share on the RGB one
    chips = [ax for ax in fig.axes if ax.images]
    expected = []
    for sid in chosen:
        times = pd.DatetimeIndex(series[sid]["time"].values)
        shown = [next(t for t in range(len(times)) if times[t].month == m) for m in range(1, 13)]
        masked = [float(np.isnan(series[sid].values[t]).any(axis=0).mean()) for t in shown]
        expected += masked + masked
    framed = [ax.spines["top"].get_edgecolor()[:3] == mpl.colors.to_rgb(plots.corpus.MASKED_COLOUR)
              for ax in chips]
    assert framed == [m > 0 for m in expected]
    assert expected[2] >= 64 / CORPUS["size"] ** 2  # the March date masked above
    assert any(t.get_text() == f"{expected[2]:.0%}" for t in chips[2].texts)
    assert "red frame: pixels masked" in fig.get_suptitle()
    # one scale bar per site, of a round length within a third of the 3 m x 32 px image
    bars = [a for ax in chips for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == len(chosen)
    assert {bar.txt_label.get_text() for bar in bars} == {"20 m"}


def test_band_value_sample_and_histograms(corpus: Path, index: pd.DataFrame) -> None:
    values = exploration.sample_band_values(
        corpus, index, n_sites=4, dates_per_site=2, pixels_per_image=100, seed=0
    )
    assert list(values) == list(layout.BANDS)
    assert all(len(v) == 4 * 2 * 100 for v in values.values())
    assert all(v.min() >= 0 and v.max() < 1.5 for v in values.values())
    fig = plots.plot_band_histograms(values)
    assert len(fig.axes) == 4
    assert all(ax.get_yscale() == "log" and len(ax.patches) > 10 for ax in fig.axes)


def test_ndvi_is_per_pixel_and_nan_aware() -> None:
    data = np.zeros((1, 4, 1, 3), dtype=np.float32)
    data[0, 2, 0] = [0.05, np.nan, 0.0]  # red
    data[0, 3, 0] = [0.45, 0.30, 0.0]  # nir
    series = xr.DataArray(data, dims=("time", "band", "y", "x"),
                          coords={"band": list(layout.BANDS)})
    result = exploration.ndvi(series).values[0, 0]
    assert result[0] == pytest.approx(0.8)
    assert np.isnan(result[1]) and np.isnan(result[2])


def test_class_time_profiles_separate_vegetation_from_water(
    corpus: Path, index: pd.DataFrame
) -> None:
    profiles = exploration.class_time_profiles(corpus, index, n_per_class=3, seed=0)
    assert list(profiles.columns) == [
        "sample_id", "class", "time", "month", *layout.BANDS, "ndvi"
    ]
    per_site = profiles.groupby("sample_id").size()
    assert (per_site == 24).all()  # monthly dates of 2018 and 2019
    assert (profiles.groupby("class", observed=True)["sample_id"].nunique() <= 3).all()
    shares = exploration.dominant_share(index.set_index("sample_id").loc[per_site.index])
    assert (shares >= 0.6).all()
    assert profiles["ndvi"].between(-1, 1).all()
    summer = profiles[profiles["month"].isin([6, 7, 8])].groupby("class", observed=True)["ndvi"]
    summer_ndvi = summer.mean()
    assert summer_ndvi["water"] < 0.2
    assert summer_ndvi["forest"] > summer_ndvi["water"] + 0.3
    assert summer_ndvi["agricultural"] > summer_ndvi["water"] + 0.3

    fig = plots.plot_class_phenology(profiles)
    assert len(fig.axes) == 6  # blue, green, red, NIR, NDVI, legend
    ndvi_axis = fig.axes[4]
    assert ndvi_axis.get_title() == "NDVI"
    assert len(ndvi_axis.lines) == profiles["class"].nunique()


def test_class_distribution_figure_and_tables(index: pd.DataFrame) -> None:
    fig = plots.plot_class_distribution(index)
    left, right = fig.axes
    assert len(left.patches) == len(right.patches) == len(labels.CLASSES)
    assert sum(p.get_width() for p in left.patches) == len(index)
    assert sum(p.get_width() for p in right.patches) == pytest.approx(100)

    summary = exploration.class_summary(index, threshold=0.1)
    assert list(summary.index) == list(labels.CLASSES)
    assert summary["dominant_sites"].sum() == len(index)
    assert (summary["sites_with_share_ge_0.1"] >= summary["dominant_sites"]).all()
    assert summary["mean_share"].sum() == pytest.approx(1)
    per_site = exploration.classes_per_site(index, threshold=0.1)
    assert per_site.sum() == len(index) and per_site.index.min() >= 1


def test_split_size_table_adds_up(index: pd.DataFrame) -> None:
    split = splits.assign_splits(index, by="site", seed=0)
    table = splits.split_size_table(index, split, [0.1, 0.5, 1.0], seed=0)
    assert list(table.index) == list(labels.CLASSES)
    assert list(table.columns) == [
        "all", "train", "val", "test", "train 10%", "train 50%", "train 100%"
    ]
    counts = index["label_name"].value_counts().reindex(labels.CLASSES, fill_value=0)
    assert (table["all"] == counts).all()
    assert (table[["train", "val", "test"]].sum(axis=1) == table["all"]).all()
    assert (table["train 100%"] == table["train"]).all()
    assert (table["train 10%"] <= table["train 50%"]).all()
    train = index[split == "train"]
    assert table["train 10%"].sum() == len(splits.label_fraction(train, 0.1, seed=0))

    fig = plots.plot_split_sizes(table)
    left, right = fig.axes
    assert len(left.patches) == len(labels.CLASSES) * 3  # classes stacked on 3 splits
    assert len(right.patches) == len(labels.CLASSES) * 3  # 3 fractions per class
    assert right.get_yscale() == "log"


def test_splits_csv_is_complete(index: pd.DataFrame, tmp_path: Path) -> None:
    path = study.write_split(tmp_path / "runs", index, "site", 0)
    table = pd.read_csv(path)
    assert list(table.columns) == ["sample_id", "split", "label"]
    assert sorted(table["sample_id"]) == sorted(index["sample_id"])
    assert set(table["split"]) <= set(splits.SPLITS)
    written = {p.name for p in path.parent.iterdir()}
    assert written == {paths.SPLITS_FILE, paths.SPLITS_RECORD_FILE}  # no temp files


@pytest.mark.slow
def test_notebooks_run_end_to_end(
    corpus: Path, index: pd.DataFrame, tmp_path: Path, run_notebooks
) -> None:
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    common = {"seed": 0, "split_by": "site"}
    run_notebooks({name: common | p for name, p in NOTEBOOKS.items()}, corpus, tmp_path)
    for figure in (f for names in FIGURES.values() for f in names):
        assert (figures / f"{figure}.png").is_file(), figure
        assert (figures / f"{figure}.pdf").is_file(), figure
    stats = BandStats.load(runs / paths.BAND_STATS_FILE)
    assert len(stats.mean) == len(layout.BANDS) and all(s > 0 for s in stats.std)
    assert json.loads((runs / paths.BAND_STATS_FILE).read_text())["bands"] == list(layout.BANDS)
    table = pd.read_csv(runs / paths.SPLITS_FILE)
    assert sorted(table["sample_id"]) == sorted(index["sample_id"])
    realism_tables = {realism.CSV_NAME, realism.REAL_SPLITS_CSV_NAME,
                      realism.RENDER_SEEDS_CSV_NAME}
    written = {path.name for path in figures.iterdir()}
    if not realism.real_s2_dir().is_dir():  # notebook 07 skips every step, and says so
        assert not realism_tables & written
        assert "No real Sentinel-2 chips at" in (tmp_path / "07_realism.ipynb").read_text()
        return
    assert realism_tables <= written
    assert {f"{name}.png" for name in ("realism_chips", "realism_statistics",
                                       "realism_within_counts")} <= written

    def statistics(table: pd.DataFrame) -> set[tuple]:
        return set(table[["statistic", "band", "class"]].itertuples(index=False))

    further = pd.read_csv(figures / realism.RENDER_SEEDS_CSV_NAME)
    assert set(further["render_seed"]) == {3}  # the test's realism_render_seeds
    real_splits = pd.read_csv(figures / realism.REAL_SPLITS_CSV_NAME)
    # the rows the counts compare (a draw of 30 sites may lack a class, so not all of them)
    assert statistics(further) and statistics(further) <= statistics(real_splits)
