"""Figures. Each function takes data (index, xarray series, tables) and returns a Figure.

Figures are built on `matplotlib.figure.Figure` rather than pyplot, so nothing stays open
in a global figure manager: notebooks show a figure by ending a cell with it, and
`save_figure` writes it. Computation that is not drawing lives in `exploration.py`.
"""

from __future__ import annotations

import calendar
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.ticker import FuncFormatter

from rapid_utils import exploration, geo, labels, results
from rapid_utils.corpus import layout
from rapid_utils.metrics import MIN_ENCODER_CHANGE
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


def class_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker per class: the poster classes keep theirs, others (a chips corpus's
    own classes) take tab20 colours and a marker cycle, in the given order."""
    others = [n for n in names if n not in CLASS_COLORS]
    palette = mpl.colormaps["tab20"].colors
    cycle = "os^vDPXp*h<>"
    styles = {n: (CLASS_COLORS[n], CLASS_MARKERS[n]) for n in names if n in CLASS_COLORS}
    styles |= {n: (mpl.colors.to_hex(palette[(2 * k) % 20 + (2 * k) // 20 % 2]), cycle[k % 12])
               for k, n in enumerate(others)}
    return styles


def _class_handle(name: str, label: str, styles: Mapping[str, tuple[str, str]] | None = None
                  ) -> Line2D:
    colour, marker = (styles or class_styles([name]))[name]
    return Line2D(
        [], [], linestyle="none", marker=marker, markersize=7,
        markerfacecolor=colour, markeredgecolor="0.2", markeredgewidth=0.5,
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


def plot_chip_examples(examples: Mapping[str, Sequence[np.ndarray]],
                       percentiles: tuple[float, float] = (2, 98)) -> Figure:
    """Example chips of each class (one row per class): true colour, then false colour.

    `examples` maps class name to reflectance chips (4, y, x) in Blue, Green, Red, NIR order
    (`corpus.chips.example_chips`); each row is stretched as one (see `_stretch`).
    """
    rows = {name: chips for name, chips in examples.items() if len(chips)}
    if not rows:
        raise ValueError("no example chips to plot")
    n_columns = max(len(chips) for chips in rows.values())
    order = [layout.BANDS.index(b) for b in (*TRUE_COLOUR, *FALSE_COLOUR)]
    fig = Figure(figsize=(1.6 + 1.3 * 2 * n_columns, 0.5 + 1.3 * len(rows)),
                 layout="constrained")
    axes = fig.subplots(len(rows), 2 * n_columns + 1, squeeze=False)
    for r, (name, chips) in enumerate(rows.items()):
        cube = np.stack(chips)[:, order]  # (n, 6, y, x): true then false colour
        true, false = _stretch(cube[:, :3], percentiles), _stretch(cube[:, 3:], percentiles)
        axes[r, 0].text(1.0, 0.5, f"{name}", ha="right", va="center", fontsize=9,
                        transform=axes[r, 0].transAxes)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.axis("off")
                continue
            k, colour = (c - 1) % n_columns, (true, false)[(c - 1) // n_columns]
            if k < len(chips):
                ax.imshow(np.moveaxis(colour[k], 0, -1), interpolation="nearest")
            else:
                ax.axis("off")
    fig.suptitle(f"Example chips per class: {n_columns} in true colour (R, G, B), then the same "
                 f"in false colour (NIR, R, G)", fontsize=10)
    return fig


def plot_band_histograms(values_by_band: Mapping[str, np.ndarray], bins: int = 80,
                         source: str = "Planet Fusion") -> Figure:
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
    fig.suptitle(f"{source} reflectance per band (sampled sites and dates)")
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
    styles = class_styles(list(table.index))
    for name in table.index:
        values = table.loc[name, split_columns].to_numpy(dtype=float)
        left.bar(split_columns, values, bottom=bottom, color=styles[name][0],
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
    """BYOL loss, projection std (with the 1/sqrt(d) reference), kNN accuracy and the encoder's
    distance from its initialisation, per epoch.

    `history` is `train.pretrain`'s list of per-epoch dicts; `projection_dim` (the config's d)
    places the reference line of well-spread projections.
    """
    table = pd.DataFrame(list(history))
    dim = projection_dim
    fig = Figure(figsize=(15.0, 3.6), layout="constrained")
    loss_ax, std_ax, knn_ax, change_ax = fig.subplots(1, 4)
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
    change_ax.plot(epochs, 100 * table["encoder_change"], marker="o", color="#7b3294")
    change_ax.axhline(100 * MIN_ENCODER_CHANGE, color="#d7263d", linestyle=":",
                      label="below: hardly trained")
    change_ax.set_ylim(bottom=0)
    change_ax.set_title("Encoder change from its initialisation")
    change_ax.set_ylabel("||w − w₀|| / ||w₀|| (%)")
    change_ax.legend(fontsize=8)
    for ax in (loss_ax, std_ax, knn_ax, change_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def plot_embedding(features: np.ndarray, class_ids: Sequence[int],
                   class_names: Sequence[str] = labels.CLASSES) -> Figure:
    """2-D PCA of encoder features (N, D), one marker style per class (`class_names`)."""
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
    styles = class_styles(class_names)
    counts = {name: int(np.sum(class_ids == k)) for k, name in enumerate(class_names)}
    for k, name in enumerate(class_names):
        chosen = class_ids == k
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=30, c=styles[name][0],
                       marker=styles[name][1], edgecolors="0.2", linewidths=0.4, alpha=0.85)
    ax.legend(handles=[_class_handle(n, f"{n} ({counts[n]})", styles) for n in class_names
                       if counts[n]], title="class (sites)", fontsize=8, title_fontsize=8)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title(f"Encoder features of {len(features):,} sites (PCA)")
    ax.grid(alpha=0.3)
    return fig


def _run_title(results: Mapping) -> str:
    p = results["parameters"]
    probe = ", linear probe" if p.get("linear_probe") else ""
    init = "byol" if str(p["init"]).startswith("byol:") else p["init"]
    return (f"{p['arch']}, init {init}, {100 * p['label_fraction']:g} % of labels{probe}, "
            f"seed {p['seed']}")


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


def plot_per_date_accuracy(results: Mapping, split: str = "test") -> Figure:
    """Accuracy of single-date predictions at each evaluation date, beside the voted accuracy.

    Results files older than `eval_dates` have no per-date accuracy; the figure says so.
    """
    per_date = results.get("per_date_accuracy", {}).get(split, {})
    fig = Figure(figsize=(max(5.0, 0.7 * len(per_date) + 2.5), 3.4), layout="constrained")
    ax = fig.subplots()
    if not per_date:
        ax.text(0.5, 0.5, "no per-date accuracy in this results file\n(written before eval_dates)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    dates = sorted(per_date)
    ax.bar(range(len(dates)), [100 * per_date[d] for d in dates], color="#d7263d", alpha=0.8,
           label="one date")
    voted = 100 * results["final"][split]["accuracy"]
    ax.axhline(voted, color="0.2", linestyle="--", label=f"vote over dates: {voted:.1f} %")
    ax.set_xticks(range(len(dates)), dates, rotation=45 if len(dates) > 6 else 0, ha="right"
                  if len(dates) > 6 else "center", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"{split.capitalize()} accuracy per evaluation date\n{_run_title(results)}",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_precision_recall(results: Mapping, split: str = "test") -> Figure:
    """Per-class precision and recall bars (poster Fig. 5) of a results dict's final metrics."""
    final = results["final"][split]
    names = list(final["precision"])  # the run's classes, in class-index order
    styles = class_styles(names)
    positions = np.arange(len(names))
    fig = Figure(figsize=(max(9.0, 0.9 * len(names)), 3.8), layout="constrained")
    ax = fig.subplots()
    for offset, key, hatch in ((-0.2, "precision", ""), (0.2, "recall", "//")):
        values = [100 * final[key].get(name, 0.0) for name in names]
        ax.bar(positions + offset, values, width=0.4, hatch=hatch, label=key,
               color=[styles[c][0] for c in names], edgecolor="0.2", linewidth=0.6)
    ax.set_xticks(positions, names, rotation=20)
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
    names = list(results["final"][split]["precision"])  # the run's classes, in index order
    side = max(7.0, 0.6 * len(names))
    fig = Figure(figsize=(side, side - 1.0), layout="constrained")
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


# --------------------------------------------------------------------------- poster figures 3-5

# One colour per scenario in every figure: Okabe-Ito, safe for the common colour-vision
# deficiencies; the BYOL fractions share a hue family (blues/green), markers add redundancy.
SCENARIO_COLORS: dict[str, str] = {
    "scratch-100%": "#000000",  # black
    "byol-100%": "#0072B2",  # blue
    "byol-10%": "#56B4E9",  # sky blue
    "byol-1%": "#009E73",  # bluish green
    "imagenet-100%": "#D55E00",  # vermillion
    "scratch-1%": "#CC79A7",  # reddish purple
}
SCENARIO_MARKERS: dict[str, str] = {
    "scratch-100%": "s",
    "byol-100%": "o",
    "byol-10%": "^",
    "byol-1%": "v",
    "imagenet-100%": "D",
    "scratch-1%": "X",
}


def _box(ax, xy: tuple[float, float], text: str, colour: str, width: float = 1.5,
         height: float = 0.8) -> None:
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.05,rounding_size=0.12", facecolor=colour,
                                edgecolor="0.2", linewidth=1.0))
    ax.text(x, y, text, ha="center", va="center", fontsize=10)


def _arrow(ax, start, end, **style) -> None:
    options = {"arrowstyle": "-|>", "mutation_scale": 14, "linewidth": 1.3, "color": "0.2"}
    ax.add_patch(FancyArrowPatch(start, end, **(options | style)))


def plot_byol_diagram() -> Figure:
    """Poster Fig. 3: BYOL (Grill et al. 2020) as trained here, drawn with patches."""
    online, target = "#cfe3f3", "#fbe0cc"  # light tints of Okabe-Ito blue and vermillion
    fig = Figure(figsize=(13.0, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(-0.2, 14.6)
    ax.set_ylim(-0.4, 5.0)
    ax.axis("off")
    top, bottom, middle = 3.6, 1.0, 2.3
    _box(ax, (0.6, middle), "site chip x\n(4 bands)", "0.92", width=1.3, height=1.0)
    _box(ax, (2.5, top), r"view $v$", "0.97", width=1.1)
    _box(ax, (2.5, bottom), r"view $v^\prime$", "0.97", width=1.1)
    views = ((top, r"$t \sim \mathcal{T}$"), (bottom, r"$t^\prime \sim \mathcal{T}^\prime$"))
    for y, name in views:
        _arrow(ax, (1.3, middle + (0.25 if y > middle else -0.25)), (1.95, y))
        ax.text(1.45, (middle + y) / 2 + (0.2 if y > middle else -0.2), name, fontsize=10,
                ha="right", va="center")
    stages_online = [(r"encoder $f_\theta$" "\n(ResNet)", 4.4),
                     (r"projector $g_\theta$" "\n(MLP)", 6.5),
                     (r"predictor $q_\theta$" "\n(MLP)", 8.6)]
    stages_target = [(r"encoder $f_\xi$" "\n(ResNet)", 4.4),
                     (r"projector $g_\xi$" "\n(MLP)", 6.5)]
    for stages, y, colour, start in ((stages_online, top, online, 3.05),
                                     (stages_target, bottom, target, 3.05)):
        x_prev = start
        for text, x in stages:
            _arrow(ax, (x_prev, y), (x - 0.8, y))
            _box(ax, (x, y), text, colour)
            x_prev = x + 0.8
    for x, text, y in ((5.45, r"$y_\theta$", top), (7.55, r"$z_\theta$", top),
                       (5.45, r"$y^\prime_\xi$", bottom),
                       (7.55, r"$z^\prime_\xi$", bottom)):
        ax.text(x, y + 0.22, text, fontsize=10, ha="center", va="bottom")
    _box(ax, (8.6, bottom), "stop-gradient\n" r"$\mathrm{sg}(z^\prime_\xi)$", "0.97")
    _arrow(ax, (7.3, bottom), (7.8, bottom))
    loss = r"loss  $2 - 2\cos(q_\theta(z_\theta),\ \mathrm{sg}(z^\prime_\xi))$"
    _box(ax, (11.9, middle), loss + "\n(symmetrised: swap v and v′)", "#fff4c2", width=4.2,
         height=1.0)
    _arrow(ax, (9.4, top), (11.0, middle + 0.5), connectionstyle="arc3,rad=-0.15")
    _arrow(ax, (9.4, bottom), (11.0, middle - 0.5), connectionstyle="arc3,rad=0.15")
    ax.text(10.35, top - 0.25, r"$q_\theta(z_\theta)$", fontsize=10, ha="left")
    # EMA: the target's weights follow the online weights, no gradient flows to them.
    _arrow(ax, (5.45, top - 0.55), (5.45, bottom + 0.55), linestyle="--", color="#D55E00",
           linewidth=1.6)
    ema = r"$\xi \leftarrow \tau\xi + (1-\tau)\theta$"
    ax.text(5.6, middle, "EMA update\n" + ema, fontsize=10, color="#D55E00", ha="left",
            va="center")
    ax.text(4.4, top + 0.75, "online network (θ, trained by gradient)", fontsize=11,
            ha="left", va="bottom", color="#0072B2", weight="bold")
    ax.text(4.4, bottom - 0.7, "target network (ξ, no gradient)", fontsize=11,
            ha="left", va="top", color="#D55E00", weight="bold")
    ax.text(11.9, middle - 1.0, r"after pretraining: keep encoder $f_\theta$," "\n"
            "fine-tune it for the 7 classes", fontsize=10, ha="center", va="top", color="0.3")
    ax.set_title("BYOL self-supervised pretraining (poster Fig. 3)", fontsize=12)
    return fig


def _brief(reason: str, width: int = 70) -> str:
    """The gist of a skip reason for a figure title; the full text is in notebook 05."""
    gist = reason.splitlines()[0].split(" (")[0].split(". ")[0] if reason else "no reason"
    return textwrap.shorten(gist, width, placeholder="...")


def _skipped_note(skipped: Mapping[str, str] | None, keys: Sequence[str]) -> str:
    notes = [f"{results.SCENARIO_BY_KEY[k].label if k in results.SCENARIO_BY_KEY else k} "
             f"skipped: {_brief(reason)}" for k, reason in (skipped or {}).items() if k in keys]
    return "\n".join(notes)


def plot_accuracy_curves(per_epoch: pd.DataFrame, skipped: Mapping[str, str] | None = None
                         ) -> Figure:
    """Poster Fig. 4: test accuracy per epoch per scenario, mean over seeds, min-max band.

    `per_epoch` is `results.per_epoch_table`; `skipped` (scenario key -> reason) adds a
    legend entry and a title note for scenarios that could not run.
    """
    fig = Figure(figsize=(9.0, 5.4), layout="constrained")
    ax = fig.subplots()
    keys = [s.key for s in results.ALL_SCENARIOS]
    for key in keys:
        rows = per_epoch[per_epoch["scenario"] == key]
        if rows.empty:
            continue
        by_epoch = rows.groupby("epoch")["test_accuracy"]
        mean, low, high = (100 * getattr(by_epoch, f)() for f in ("mean", "min", "max"))
        n_seeds = rows["seed"].nunique()
        colour = SCENARIO_COLORS[key]
        ax.fill_between(mean.index, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.plot(mean.index, mean, color=colour, marker=SCENARIO_MARKERS[key], markersize=5,
                linewidth=1.8, linestyle=":" if key not in {s.key for s in results.SCENARIOS}
                else "-",
                label=f"{results.SCENARIO_BY_KEY[key].label} "
                      f"(n = {n_seeds} seed{'' if n_seeds == 1 else 's'})")
    handles, names = ax.get_legend_handles_labels()
    handles.append(Patch(facecolor="0.5", alpha=0.25, label="min-max over seeds"))
    for key in skipped or {}:
        if not (per_epoch["scenario"] == key).any():
            label = results.SCENARIO_BY_KEY[key].label if key in results.SCENARIO_BY_KEY else key
            handles.append(Line2D([], [], color=SCENARIO_COLORS.get(key, "0.5"), linestyle="none",
                                  marker="x", label=f"{label}: skipped"))
    ax.legend(handles=handles, fontsize=9, loc="best", framealpha=0.95)
    ax.set_xlabel("fine-tuning epoch", fontsize=11)
    ax.set_ylabel("test accuracy (%)", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    title = "Test accuracy per epoch: mean over seeds, band min to max (poster Fig. 4)"
    note = _skipped_note(skipped, [k for k in (skipped or {})
                                   if not (per_epoch["scenario"] == k).any()])
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=10)
    return fig


FIG5_SCENARIOS = ("byol-100%", "imagenet-100%", "scratch-100%")


def plot_class_scores(summary: pd.DataFrame, skipped: Mapping[str, str] | None = None,
                      scenarios: Sequence[str] = FIG5_SCENARIOS) -> Figure:
    """Poster Fig. 5: per-class precision and recall (means over seeds) of a few scenarios.

    `summary` is `results.summary_table`. Scenarios absent from it are left out and named in
    the title (with the reason from `skipped` where given).
    """
    present = [k for k in scenarios if k in summary.index]
    missing = [k for k in scenarios if k not in summary.index]
    names = [c.removeprefix("precision_") for c in summary.columns if c.startswith("precision_")]
    fig = Figure(figsize=(max(12.0, 1.1 * len(names)), 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    positions = np.arange(len(names))
    width = 0.8 / max(len(present), 1)
    for ax, metric in zip(axes, ("precision", "recall"), strict=True):
        for i, key in enumerate(present):
            values = [100 * summary.loc[key, f"{metric}_{c}"] for c in names]
            n = int(summary.loc[key, "n_seeds"])
            ax.bar(positions + (i - (len(present) - 1) / 2) * width, values, width=width,
                   color=SCENARIO_COLORS[key], edgecolor="0.2", linewidth=0.5,
                   label=f"{summary.loc[key, 'label']} (n = {n} seed{'' if n == 1 else 's'})")
        ax.set_xticks(positions, names, rotation=25, fontsize=10)
        ax.set_ylim(0, 105)
        ax.set_title(f"{metric} per class (test, mean over seeds)", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("%", fontsize=11)
    if present:  # below the axes, so no bar height can hide under it
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=len(present), fontsize=10)
    title = "Per-class precision and recall (poster Fig. 5)"
    if missing:
        reasons = [
            f"{results.SCENARIO_BY_KEY[k].label}: "
            + (f"skipped, {_brief(skipped[k])}" if skipped and k in skipped else "no results")
            for k in missing
        ]
        title += "\nnot shown: " + "; ".join(reasons)
    fig.suptitle(title, fontsize=11)
    return fig


# --------------------------------------------------------------------------- label efficiency

def plot_label_efficiency(summary: pd.DataFrame, title: str = "") -> Figure:
    """Accuracy against labels per class, one panel per evaluation, one line per encoder.

    `summary` is `evaluation.summarise`'s table; the shaded band is its confidence interval
    over repeats (absent where one repeat left it NaN). Panels, in the summary's order, share the
    y axis and the categorical x positions (1, 5, 10, ..., "all"), so encoders compare within
    an evaluation.
    """
    if summary.empty:
        raise ValueError("the summary is empty: nothing to plot")
    panels = list(dict.fromkeys(summary["evaluation"]))  # summarise's order
    encoders = list(dict.fromkeys(summary["encoder"]))
    # Okabe-Ito (colour-vision safe), most distinct first; markers add redundancy
    palette = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#000000", "#E69F00", "#56B4E9")
    colours = {name: palette[i % len(palette)] for i, name in enumerate(encoders)}
    markers = {name: "os^DvPX"[i % 7] for i, name in enumerate(encoders)}
    levels = sorted(set(summary["labels_per_class"]),
                    key=lambda k: np.inf if k == "all" else float(k))
    position = {k: i for i, k in enumerate(levels)}
    names = {"knn": "kNN on frozen features", "linear-probe": "linear probe on frozen features",
             "finetune": "fine-tuning"}
    fig = Figure(figsize=(4.2 * len(panels) + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, evaluation in zip(axes, panels, strict=True):
        rows = summary[summary["evaluation"] == evaluation]
        for encoder in encoders:
            line = rows[rows["encoder"] == encoder]
            if line.empty:
                continue
            x = line["labels_per_class"].map(position).to_numpy()
            order = np.argsort(x)
            ax.fill_between(x[order], 100 * line["accuracy_ci_low"].to_numpy()[order],
                            100 * line["accuracy_ci_high"].to_numpy()[order],
                            color=colours[encoder], alpha=0.18, linewidth=0)
            ax.plot(x[order], 100 * line["accuracy_mean"].to_numpy()[order],
                    marker=markers[encoder], color=colours[encoder], linewidth=1.8)
        repeats = sorted(set(rows["n_repeats"].astype(int)))
        span = f"{repeats[0]}" if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
        noun = "repeat, no interval" if repeats == [1] else "repeats"
        ax.set_title(f"{names.get(evaluation, evaluation)} (n = {span} {noun})", fontsize=10)
        ax.set_xticks(range(len(levels)), [str(k) for k in levels])
        ax.set_xlabel("labels per class")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    confidence = summary["confidence"].iloc[0] if "confidence" in summary else None
    band = f"{100 * confidence:g} % CI over repeats" if confidence else "CI over repeats"
    handles = [Line2D([], [], color=colours[n], marker=markers[n], label=n) for n in encoders]
    handles.append(Patch(facecolor="0.5", alpha=0.3, label=band))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
               fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
