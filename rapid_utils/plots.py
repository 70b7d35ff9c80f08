"""Figures. Each function takes data (index, xarray series, tables) and returns a Figure.

Figures are built on `matplotlib.figure.Figure` rather than pyplot, so nothing stays open
in a global figure manager: notebooks show a figure by ending a cell with it, and
`save_figure` writes it. Computation that is not drawing lives in `exploration.py`.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from rapid_utils import exploration, geo, labels
from rapid_utils.corpus import layout
from rapid_utils.splits import SPLITS

# One colour per poster class (labels.CLASSES order), after CORINE's legend but darker where
# CORINE's pastel tones would vanish on a light map; markers tell classes apart without colour.
CLASS_COLORS: dict[str, str] = {
    "artificial": "#d7263d",  # red
    "agricultural": "#f0a202",  # amber
    "forest": "#1b6e2d",  # dark green
    "shrub": "#9bd45a",  # light green
    "bare": "#7a7a7a",  # grey
    "wetlands": "#8e5fc9",  # violet
    "water": "#1f5fbf",  # blue
}
CLASS_MARKERS: dict[str, str] = {
    "artificial": "s",
    "agricultural": "o",
    "forest": "^",
    "shrub": "v",
    "bare": "D",
    "wetlands": "P",
    "water": "X",
}
BAND_COLORS: dict[str, str] = {
    "blue": "#2c6fbb",
    "green": "#2e9e4f",
    "red": "#c8413b",
    "nir": "#6a3d9a",
}
TRUE_COLOUR = ("red", "green", "blue")
FALSE_COLOUR = ("nir", "red", "green")
LAND_COLOUR = "#e4e2dc"
SEA_COLOUR = "#f2f7fb"


def save_figure(fig: Figure, directory: str | Path, name: str) -> Path:
    """Write `name.png` (150 dpi) and `name.pdf` into `directory`; return the PNG's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{name}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(directory / f"{name}.pdf", bbox_inches="tight")
    return png


def _class_handle(name: str, label: str) -> Line2D:
    return Line2D(
        [], [], linestyle="none", marker=CLASS_MARKERS[name], markersize=7,
        markerfacecolor=CLASS_COLORS[name], markeredgecolor="0.2", markeredgewidth=0.5,
        label=label,
    )


def plot_sample_locations(index: pd.DataFrame) -> Figure:
    """Poster Fig. 1: site centroids over Europe, coloured by dominant class."""
    mask, extent = geo.europe_land_mask()
    fig = Figure(figsize=(8.0, 7.5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(
        mask.astype(np.uint8), extent=extent, origin="upper", interpolation="nearest",
        cmap=ListedColormap([SEA_COLOUR, LAND_COLOUR]), vmin=0, vmax=1,
    )
    located = index.dropna(subset=["lon", "lat"])
    n = len(located)
    size = float(np.clip(600 / np.sqrt(max(n, 1)), 0.3, 30))
    edges = n <= 5000  # edges help small maps; on 500 000 dots they are only noise
    counts = located["label_name"].value_counts()
    handles = []
    # Common classes first, so that rare ones are drawn on top and stay visible.
    for name in sorted(labels.CLASSES, key=lambda c: -counts.get(c, 0)):
        sites = located[located["label_name"] == name]
        if sites.empty:
            continue
        ax.scatter(
            sites["lon"], sites["lat"], s=size, c=CLASS_COLORS[name], marker=CLASS_MARKERS[name],
            edgecolors="0.15" if edges else "none", linewidths=0.4 if edges else 0,
            alpha=0.9 if edges else 0.6, rasterized=not edges,
        )
    for name in labels.CLASSES:
        handles.append(_class_handle(name, f"{name} ({counts.get(name, 0):,})"))
    ax.legend(
        handles=handles, title="dominant class (sites)", loc="upper left", fontsize=8,
        title_fontsize=8, framealpha=0.95,
    )
    west, east, south, north = extent
    ax.set_xlim(west, east)
    ax.set_ylim(south, north)
    ax.set_aspect(1 / np.cos(np.deg2rad((south + north) / 2)))  # equal km in x and y mid-map
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    missing = len(index) - n
    note = f", {missing:,} without location" if missing else ""
    ax.set_title(f"RapidAI4EO sample locations ({n:,} sites{note})")
    return fig


def _stretch(
    cube: np.ndarray, percentiles: tuple[float, float], min_range: float = 0.1
) -> np.ndarray:
    """Scale a (time, 3, y, x) reflectance cube to 0-1 for display; NaN becomes white.

    The limits are the median over dates of each date's percentiles (all three channels
    pooled, so hues are kept): a cloudy or snowy month then saturates instead of darkening
    the whole row. The range spans at least `min_range` reflectance, so that dark, flat
    scenes (water, conifers) stay dark instead of turning sensor noise into texture.
    """
    lows, highs = [], []
    for image in cube:
        finite = image[np.isfinite(image)]
        if finite.size:
            low, high = np.percentile(finite, percentiles)
            lows.append(low)
            highs.append(high)
    if not lows:
        return np.ones_like(cube)
    low = float(np.median(lows))
    high = max(float(np.median(highs)), low + min_range)
    scaled = np.clip((cube - low) / (high - low), 0, 1)
    return np.where(np.isfinite(scaled), scaled, 1.0)


def _site_caption(sample_id: str, index: pd.DataFrame | None) -> str:
    if index is None or sample_id not in set(index["sample_id"]):
        return sample_id
    row = index[index["sample_id"] == sample_id]
    share = exploration.dominant_share(row).iloc[0]
    return f"{sample_id}\n{row['label_name'].iloc[0]} ({share:.0%})"


def plot_monthly_grid(
    series_by_site: Mapping[str, xr.DataArray],
    index: pd.DataFrame | None = None,
    year: int | None = None,
    percentiles: tuple[float, float] = (2, 98),
) -> Figure:
    """Poster Fig. 2: one column per month; per site a true- and a false-colour row.

    `series_by_site` maps sample_id to reflectance (time, band, y, x). The first date of
    each month of `year` (default: the first year present) is shown, stretched per site and
    composite between `percentiles` (median over the year's dates, see `_stretch`).
    `index` adds the dominant class and its share to the site's caption.
    """
    if not series_by_site:
        raise ValueError("no site series to plot")
    if year is None:
        year = int(min(pd.DatetimeIndex(s["time"].values).year.min() for s in
                       series_by_site.values()))
    n_sites, n_months = len(series_by_site), 12
    fig = Figure(figsize=(2.0 + 0.95 * n_months, 0.6 + 1.9 * n_sites))
    grid = fig.add_gridspec(
        2 * n_sites, n_months + 1, width_ratios=[2.1] + [1] * n_months,
        wspace=0.04, hspace=0.06, left=0.01, right=0.99, bottom=0.01,
        top=1 - 0.55 / (0.6 + 1.9 * n_sites),
    )
    for i, (sample_id, series) in enumerate(series_by_site.items()):
        times = pd.DatetimeIndex(series["time"].values)
        in_year = np.flatnonzero(times.year == year)
        first_of_month = {}
        for t in in_year:
            first_of_month.setdefault(times[t].month, t)
        caption = fig.add_subplot(grid[2 * i : 2 * i + 2, 0])
        caption.axis("off")
        caption.text(0.0, 0.5, _site_caption(sample_id, index), ha="left", va="center",
                     fontsize=8, transform=caption.transAxes)
        for r, (bands, name) in enumerate(((TRUE_COLOUR, "RGB"), (FALSE_COLOUR, "NIR-R-G"))):
            caption.text(0.97, 0.75 - 0.5 * r, name, ha="right", va="center", fontsize=7,
                         color="0.3", transform=caption.transAxes)
            cube = series.sel(band=list(bands)).isel(time=in_year).values  # (t, 3, y, x)
            scaled = _stretch(cube, percentiles)
            for month in range(1, n_months + 1):
                ax = fig.add_subplot(grid[2 * i + r, month])
                ax.set_xticks([])
                ax.set_yticks([])
                if month in first_of_month:
                    position = list(in_year).index(first_of_month[month])
                    ax.imshow(np.moveaxis(scaled[position], 0, -1), interpolation="nearest")
                else:
                    ax.set_facecolor("0.9")
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=6,
                            transform=ax.transAxes)
                if i == 0 and r == 0:
                    ax.set_title(calendar.month_abbr[month], fontsize=9)
    fig.suptitle(
        f"Monthly Planet Fusion images, {year}: true colour (R, G, B) and false colour "
        f"(NIR, R, G), stretched per site ({percentiles[0]:g}-{percentiles[1]:g} percentiles)",
        fontsize=10, y=1 - 0.15 / (0.6 + 1.9 * n_sites),
    )
    return fig


def plot_band_histograms(values_by_band: Mapping[str, np.ndarray], bins: int = 80) -> Figure:
    """Histograms of surface reflectance per band (log counts), with each band's median."""
    bands = [b for b in layout.BANDS if b in values_by_band]
    fig = Figure(figsize=(3.0 * len(bands), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(bands), sharey=True))
    everything = np.concatenate([np.asarray(values_by_band[b]) for b in bands])
    top = float(np.nanpercentile(everything, 99.9)) if everything.size else 1.0
    edges = np.linspace(0.0, max(top, 0.05), bins + 1)
    for ax, band in zip(axes, bands, strict=True):
        values = np.asarray(values_by_band[band])
        ax.hist(values, bins=edges, color=BAND_COLORS.get(band, "0.3"), alpha=0.85)
        if values.size:
            median = float(np.nanmedian(values))
            ax.axvline(median, color="black", linestyle="--", linewidth=1)
            ax.text(0.97, 0.95, f"median {median:.3f}\nn = {values.size:,}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(band.upper() if band == "nir" else band)
        ax.set_xlabel("surface reflectance")
    axes[0].set_ylabel("pixels")
    fig.suptitle("Planet Fusion reflectance per band (sampled sites and dates)")
    return fig


def plot_class_phenology(profiles: pd.DataFrame, spread: tuple[float, float] = (0.25, 0.75)
                         ) -> Figure:
    """Per class, mean reflectance per band and mean NDVI by month, with a quantile band.

    `profiles` is the tidy table of `exploration.class_time_profiles`; both years are
    pooled by calendar month.
    """
    summary = exploration.monthly_class_summary(profiles, spread)
    variables = [*layout.BANDS, "ndvi"]
    fig = Figure(figsize=(12.0, 6.6), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    sites = profiles.groupby("class", observed=True)["sample_id"].nunique()
    for ax, variable in zip(axes, variables, strict=False):
        for name in labels.CLASSES:
            rows = summary[(summary["class"] == name) & (summary["variable"] == variable)]
            if rows.empty:
                continue
            ax.fill_between(rows["month"], rows["low"], rows["high"], color=CLASS_COLORS[name],
                            alpha=0.15, linewidth=0)
            ax.plot(rows["month"], rows["mean"], color=CLASS_COLORS[name],
                    marker=CLASS_MARKERS[name], markersize=4, markeredgecolor="0.2",
                    markeredgewidth=0.4, linewidth=1.5)
        title = variable.upper() if variable in ("nir", "ndvi") else variable
        ax.set_title(title if variable == "ndvi" else f"{title} reflectance")
        ax.set_xticks(range(1, 13), [calendar.month_abbr[m][0] for m in range(1, 13)])
        ax.set_xlim(0.5, 12.5)
        ax.set_xlabel("month")
        ax.set_ylabel("NDVI" if variable == "ndvi" else "surface reflectance")
        ax.grid(alpha=0.3)
    legend_ax = axes[len(variables)]
    legend_ax.axis("off")
    handles = [
        _class_handle(name, f"{name} ({sites[name]} site{'' if sites[name] == 1 else 's'})")
        for name in labels.CLASSES if sites.get(name, 0)
    ]
    handles.append(Patch(facecolor="0.6", alpha=0.3,
                         label=f"{spread[0]:.0%}-{spread[1]:.0%} of site-dates"))
    legend_ax.legend(handles=handles, loc="center", title="class (mean over sites)",
                     fontsize=9, frameon=False)
    fig.suptitle("Class profiles through the year: mean reflectance and NDVI per month")
    return fig


def plot_class_distribution(index: pd.DataFrame) -> Figure:
    """Sites per dominant poster class, beside the mean share each class covers."""
    counts = index["label_name"].value_counts().reindex(labels.CLASSES, fill_value=0)
    shares = labels.class_shares(index[list(labels.SHARE_COLUMNS)]).mean()
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True)
    positions = np.arange(len(labels.CLASSES))
    colours = [CLASS_COLORS[c] for c in labels.CLASSES]
    for ax, values, text in (
        (left, counts.to_numpy(), [f"{n:,} ({n / max(len(index), 1):.0%})" for n in counts]),
        (right, 100 * shares.to_numpy(), [f"{s:.1%}" for s in shares]),
    ):
        ax.barh(positions, values, color=colours, edgecolor="0.2", linewidth=0.6)
        for y, (value, label) in enumerate(zip(values, text, strict=True)):
            ax.text(value, y, f" {label}", va="center", fontsize=8)
        ax.set_xlim(0, max(float(np.max(values)), 1e-9) * 1.3)
        ax.grid(axis="x", alpha=0.3)
    left.set_yticks(positions, labels.CLASSES)
    left.invert_yaxis()
    left.set_xlabel("sites")
    left.set_title(f"Dominant class ({len(index):,} sites)")
    right.set_xlabel("mean share of site area (%)")
    right.set_title("Mean share of each class (all 44 codes grouped)")
    return fig


def plot_split_sizes(table: pd.DataFrame) -> Figure:
    """Sites per class in each split (stacked) and in each label fraction (log scale).

    `table` is `splits.split_size_table`: classes as rows, split and fraction columns.
    """
    split_columns = [c for c in SPLITS if c in table]
    fraction_columns = [c for c in table.columns if c.startswith("train ")]
    fig = Figure(figsize=(12.0, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.6])
    bottom = np.zeros(len(split_columns))
    for name in table.index:
        values = table.loc[name, split_columns].to_numpy(dtype=float)
        left.bar(split_columns, values, bottom=bottom, color=CLASS_COLORS.get(name, "0.5"),
                 edgecolor="0.2", linewidth=0.5, label=name)
        bottom += values
    for x, total in enumerate(bottom):
        left.text(x, total, f"{int(total):,}", ha="center", va="bottom", fontsize=8)
    left.set_ylim(0, max(bottom.max(), 1) * 1.12)
    left.set_ylabel("sites")
    left.set_title("Sites per split, by dominant class")
    handles, names = left.get_legend_handles_labels()
    left.legend(handles[::-1], names[::-1], fontsize=8, loc="upper right", title="class",
                title_fontsize=8)  # reversed: legend rows follow the stack, top to bottom
    if fraction_columns:
        positions = np.arange(len(table.index))
        width = 0.8 / len(fraction_columns)
        shades = mpl.colormaps["Blues"](np.linspace(0.4, 0.9, len(fraction_columns)))
        for k, column in enumerate(fraction_columns):
            values = table[column].to_numpy()
            x = positions - 0.4 + width * (k + 0.5)
            right.bar(x, np.where(values > 0, values, np.nan), width=width, color=shades[k],
                      edgecolor="0.2", linewidth=0.4, label=column.removeprefix("train "))
            for xi, value in zip(x, values, strict=True):
                right.text(xi, max(value, 1), f"{value:,}", ha="center", va="bottom",
                           fontsize=6, rotation=90)
        right.set_yscale("log")
        right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        right.set_ylim(0.8, max(table[fraction_columns].to_numpy().max(), 1) * 8)
        right.set_xticks(positions, table.index, rotation=20)
        right.legend(title="share of train labels", fontsize=8, title_fontsize=8,
                     loc="upper right", ncols=len(fraction_columns))
    right.set_ylabel("labelled training sites (log)")
    right.set_title("Label fractions of the training split, per class")
    right.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------- training figures


def plot_pretraining_history(
    history: Sequence[Mapping[str, float]], projection_dim: int = 256
) -> Figure:
    """BYOL loss, projection std (with the 1/sqrt(d) reference) and kNN accuracy per epoch.

    `history` is `train.pretrain`'s list of per-epoch dicts; `projection_dim` (the config's d)
    places the reference line of well-spread projections.
    """
    table = pd.DataFrame(list(history))
    dim = projection_dim
    fig = Figure(figsize=(12.0, 3.6), layout="constrained")
    loss_ax, std_ax, knn_ax = fig.subplots(1, 3)
    epochs = table["epoch"].to_numpy()
    loss_ax.plot(epochs, table["loss"], marker="o", color="0.2")
    loss_ax.set_title("BYOL loss")
    loss_ax.set_ylabel("loss (0 to 4)")
    std_ax.plot(epochs, table["projection_std"], marker="o", color="#1f5fbf", label="measured")
    std_ax.axhline(1 / np.sqrt(dim), color="#1b6e2d", linestyle="--",
                   label=f"1/√{dim}: well spread")
    std_ax.axhline(0, color="#d7263d", linestyle=":", label="0: collapsed")
    std_ax.set_ylim(bottom=-0.005)
    std_ax.set_title("Projection std (collapse guard)")
    std_ax.legend(fontsize=8)
    knn_ax.plot(epochs, 100 * table["knn_accuracy"], marker="o", color="#f0a202")
    knn_ax.set_ylim(0, 100)
    knn_ax.set_title("kNN accuracy on validation sites")
    knn_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, std_ax, knn_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_embedding(features: np.ndarray, class_ids: Sequence[int]) -> Figure:
    """2-D PCA of encoder features (N, D), one marker style per poster class."""
    from sklearn.decomposition import PCA  # imported here: only this figure needs it

    features = np.asarray(features, dtype=np.float64)
    class_ids = np.asarray(class_ids)
    n_components = min(2, *features.shape)
    pca = PCA(n_components=n_components).fit(features)
    points = np.zeros((len(features), 2))
    points[:, :n_components] = pca.transform(features)
    explained = np.zeros(2)
    explained[:n_components] = pca.explained_variance_ratio_
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    counts = {name: int(np.sum(class_ids == k)) for k, name in enumerate(labels.CLASSES)}
    for k, name in enumerate(labels.CLASSES):
        chosen = class_ids == k
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=30, c=CLASS_COLORS[name],
                       marker=CLASS_MARKERS[name], edgecolors="0.2", linewidths=0.4, alpha=0.85)
    ax.legend(handles=[_class_handle(n, f"{n} ({counts[n]})") for n in labels.CLASSES if counts[n]],
              title="dominant class (sites)", fontsize=8, title_fontsize=8)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title(f"Encoder features of {len(features):,} sites (PCA)")
    ax.grid(alpha=0.3)
    return fig


def _run_title(results: Mapping) -> str:
    p = results["parameters"]
    probe = ", linear probe" if p.get("linear_probe") else ""
    init = "byol" if str(p["init"]).startswith("byol:") else p["init"]
    return f"{p['arch']}, init {init}, {p['label_fraction']:g} of labels{probe}, seed {p['seed']}"


def plot_finetune_curves(results: Mapping) -> Figure:
    """Training loss, validation and test accuracy per epoch of one fine-tuning results dict."""
    per_epoch = results["per_epoch"]
    epochs = np.arange(1, len(per_epoch["train_loss"]) + 1)
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, per_epoch["train_loss"], marker="o", color="0.2")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_title("Training loss")
    for split, colour in (("val", "#1f5fbf"), ("test", "#d7263d")):
        acc_ax.plot(epochs, 100 * np.asarray(per_epoch[f"{split}_accuracy"]), marker="o",
                    color=colour, label=split)
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel("overall accuracy (%)")
    acc_ax.set_title("Accuracy")
    acc_ax.legend(fontsize=8)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(_run_title(results))
    return fig


def plot_precision_recall(results: Mapping, split: str = "test") -> Figure:
    """Per-class precision and recall bars (poster Fig. 5) of a results dict's final metrics."""
    final = results["final"][split]
    positions = np.arange(len(labels.CLASSES))
    fig = Figure(figsize=(9.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for offset, key, hatch in ((-0.2, "precision", ""), (0.2, "recall", "//")):
        values = [100 * final[key].get(name, 0.0) for name in labels.CLASSES]
        ax.bar(positions + offset, values, width=0.4, hatch=hatch, label=key,
               color=[CLASS_COLORS[c] for c in labels.CLASSES], edgecolor="0.2", linewidth=0.6)
    ax.set_xticks(positions, labels.CLASSES, rotation=20)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{split}: precision (plain) and recall (hatched) per class; "
                 f"accuracy {final['accuracy']:.1%}, macro-F1 {final['macro_f1']:.2f}, "
                 f"n {final['n']}", fontsize=9)
    fig.suptitle(_run_title(results))
    return fig


def plot_confusion(results: Mapping, split: str = "test") -> Figure:
    """Row-normalised confusion matrix (true class rows, predicted columns) of a results dict."""
    import seaborn as sns  # imported here: only this figure needs it

    matrix = np.asarray(results["final"][split]["confusion_matrix"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.full_like(matrix, np.nan), where=rows > 0)
    names = list(labels.CLASSES[: len(matrix)])
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(
        pd.DataFrame(shares, index=names, columns=names), ax=ax, vmin=0, vmax=1,
        cmap="Blues", annot=True, fmt=".2f", annot_kws={"fontsize": 8}, square=True,
        cbar_kws={"label": "share of the true class's sites"}, linewidths=0.5, linecolor="white",
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (row sums in brackets)")
    ax.set_yticklabels([f"{n} ({int(r)})" for n, r in zip(names, rows[:, 0], strict=True)],
                       rotation=0)
    ax.set_title(f"{split} confusion matrix, rows normalised (empty rows blank)", fontsize=9)
    fig.suptitle(_run_title(results))
    return fig
