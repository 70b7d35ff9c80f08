"""Corpus figures: where the sites are, what they look like through a year, their reflectance,
class phenology, class balance and the split sizes. Computation that is not drawing lives in
`exploration.py`."""

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
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from rapid_utils import exploration, geo, labels
from rapid_utils.corpus import chips as chips_corpus
from rapid_utils.corpus import layout
from rapid_utils.corpus.synthetic import MARKER as SYNTHETIC_MARKER
from rapid_utils.plots.common import CLASS_COLORS, CLASS_MARKERS, class_handle, class_styles
from rapid_utils.splits import SPLITS

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
MASKED_COLOUR = "#d7263d"  # frame of a monthly image with masked (QA-flagged or nodata) pixels
# What a figure's title calls the corpus (`corpus_name_of`): the embedded corpus says it is one,
# so a figure copied into slides cannot pass for real imagery.
REAL_CORPUS_NAME = "RapidAI4EO"
EMBEDDED_CORPUS_NAME = "embedded synthetic corpus, not real imagery"


def corpus_name_of(index: pd.DataFrame | None) -> str | None:
    """The corpus an index was built from, named for a figure title: `EMBEDDED_CORPUS_NAME`
    where its root (`index.attrs["root"]`) holds the generator's record (`SYNTHETIC.json`, or
    the copy a packed store keeps beside it), `REAL_CORPUS_NAME` for any other root, None
    when the index does not say where it came from."""
    root = (index.attrs.get("root") if index is not None else None) or None
    if root is None:
        return None
    if "://" in str(root):  # a store behind a URL: no marker to look at
        return None
    root = Path(root)
    beside = root.with_name(f"{root.name}.{SYNTHETIC_MARKER}")
    embedded = (root / SYNTHETIC_MARKER).is_file() or beside.is_file()
    return EMBEDDED_CORPUS_NAME if embedded else REAL_CORPUS_NAME


def dataset_name(corpus: str | Path, index: pd.DataFrame | None = None) -> str:
    """A study's corpus named for a figure title: a chips corpus by its chips folder, a site
    corpus as `corpus_name_of` says (embedded or real), else by its folder name."""
    if "://" not in str(corpus) and chips_corpus.is_chips_corpus(corpus):
        return f"{chips_corpus.load_spec(corpus).root.name} chips"
    return corpus_name_of(index) or Path(str(corpus)).name


def plot_sample_locations(index: pd.DataFrame, corpus_name: str | None = None) -> Figure:
    """Poster Fig. 1: site centroids over Europe, coloured by dominant class.

    The title names the corpus: `corpus_name`, by default what the index's root says
    (`corpus_name_of`: the embedded corpus is named as such).
    """
    corpus = corpus_name if corpus_name is not None else corpus_name_of(index)
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
        handles.append(class_handle(name, f"{name} ({counts.get(name, 0):,})"))
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
    heading = (f"{corpus[0].upper()}{corpus[1:]}: sample locations" if corpus
               else "Sample locations")
    ax.set_title(f"{heading} ({n:,} sites{note})")
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


def _place(lon: float, lat: float) -> str:
    """A centroid as degrees north/south and east/west."""
    return (f"{abs(lat):.2f}°{'N' if lat >= 0 else 'S'}, "
            f"{abs(lon):.2f}°{'E' if lon >= 0 else 'W'}")


def _site_caption(sample_id: str, index: pd.DataFrame | None) -> str:
    """A site's row label: dominant class and its share, place (centroid), then its id."""
    if index is None or sample_id not in set(index["sample_id"]):
        return sample_id
    row = index[index["sample_id"] == sample_id]
    share = exploration.dominant_share(row).iloc[0]
    lines = [f"{row['label_name'].iloc[0]} ({share:.0%})"]
    lon, lat = (row[c].iloc[0] if c in row else np.nan for c in ("lon", "lat"))
    if pd.notna(lon) and pd.notna(lat):
        lines.append(_place(float(lon), float(lat)))
    return "\n".join([*lines, sample_id])


def _pixel_size_m(series: xr.DataArray) -> float | None:
    """Ground size of a pixel in metres, from the series' projected CRS (rioxarray); None
    when the series carries none, or one in other units."""
    crs = series.rio.crs if {"x", "y"} <= set(series.coords) else None
    if crs is None or not crs.is_projected or crs.linear_units not in ("metre", "meter", "m"):
        return None
    return abs(float(series.rio.resolution()[0]))


def _scale_length(width_m: float) -> float:
    """The longest 1, 2 or 5 x 10^k metres within a third of `width_m`."""
    power = 10.0 ** np.floor(np.log10(width_m / 3))
    return next(step * power for step in (5, 2, 1) if step * power <= width_m / 3)


def _add_scale_bar(ax, pixel_m: float, width_px: int) -> None:
    """A white bar of a round length, lower left on an image drawn in pixel coordinates."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length = _scale_length(pixel_m * width_px)
    label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
    bar = AnchoredSizeBar(ax.transData, length / pixel_m, label, loc="lower left", pad=0.15,
                          borderpad=0.2, sep=1, color="white", frameon=True,
                          size_vertical=max(width_px / 60, 0.5), label_top=True,
                          fontproperties={"size": 6})
    bar.patch.set(facecolor="black", alpha=0.45, edgecolor="none")
    ax.add_artist(bar)


def _mark_masked(ax, share: float, label: bool) -> None:
    """Frame an image whose date has masked pixels (QA-flagged or nodata); say how many."""
    for spine in ax.spines.values():
        spine.set(edgecolor=MASKED_COLOUR, linewidth=1.6)
    if label:
        ax.text(0.97, 0.97, f"{share:.0%}" if share >= 0.01 else "<1%", ha="right", va="top",
                fontsize=6, color="white", transform=ax.transAxes,
                bbox={"facecolor": MASKED_COLOUR, "edgecolor": "none", "pad": 1.0})


def plot_monthly_grid(
    series_by_site: Mapping[str, xr.DataArray],
    index: pd.DataFrame | None = None,
    year: int | None = None,
    percentiles: tuple[float, float] = (2, 98),
    corpus_name: str | None = None,
) -> Figure:
    """Poster Fig. 2: one column per month; per site a true- and a false-colour row.

    `series_by_site` maps sample_id to reflectance (time, band, y, x), as
    `exploration.read_monthly_series` reads it. The first date of each month of `year`
    (default: the first year present) is shown, stretched per site and composite between
    `percentiles` (median over the year's dates, see `_stretch`). `index` labels each site's
    rows with its dominant class and share and its centroid. Dates with masked pixels (NaN:
    PF-QA flags under the reader's `qa`, or nodata) are framed in red with the masked share.
    Each site's first image carries a scale bar where the series has a projected CRS. The
    title names the corpus: `corpus_name`, by default `corpus_name_of(index)`.
    """
    if not series_by_site:
        raise ValueError("no site series to plot")
    if year is None:
        year = int(min(pd.DatetimeIndex(s["time"].values).year.min() for s in
                       series_by_site.values()))
    corpus = corpus_name if corpus_name is not None else corpus_name_of(index)
    n_sites, n_months = len(series_by_site), 12
    height = 1.1 + 1.9 * n_sites
    fig = Figure(figsize=(2.0 + 0.95 * n_months, height))
    grid = fig.add_gridspec(
        2 * n_sites, n_months + 1, width_ratios=[2.1] + [1] * n_months,
        wspace=0.04, hspace=0.06, left=0.01, right=0.99, bottom=0.01,
        top=1 - 1.05 / height,
    )
    any_masked = False
    for i, (sample_id, series) in enumerate(series_by_site.items()):
        times = pd.DatetimeIndex(series["time"].values)
        in_year = np.flatnonzero(times.year == year)
        first_of_month = {}
        for t in in_year:
            first_of_month.setdefault(times[t].month, t)
        # share of pixels with any band masked, per date of the year
        masked = np.isnan(series.isel(time=in_year).values).any(axis=1).mean(axis=(1, 2))
        pixel_m = _pixel_size_m(series)
        caption = fig.add_subplot(grid[2 * i : 2 * i + 2, 0])
        caption.axis("off")
        caption.text(0.0, 0.5, _site_caption(sample_id, index), ha="left", va="center",
                     fontsize=8, transform=caption.transAxes)
        for r, (bands, composite) in enumerate(((TRUE_COLOUR, "RGB"),
                                                (FALSE_COLOUR, "NIR-R-G"))):
            caption.text(0.97, 0.75 - 0.5 * r, composite, ha="right", va="center", fontsize=7,
                         color="0.3", transform=caption.transAxes)
            cube = series.sel(band=list(bands)).isel(time=in_year).values  # (t, 3, y, x)
            scaled = _stretch(cube, percentiles)
            scale_bar = r == 0 and pixel_m is not None
            for month in range(1, n_months + 1):
                ax = fig.add_subplot(grid[2 * i + r, month])
                ax.set_xticks([])
                ax.set_yticks([])
                if month in first_of_month:
                    position = list(in_year).index(first_of_month[month])
                    ax.imshow(np.moveaxis(scaled[position], 0, -1), interpolation="nearest")
                    if masked[position] > 0:
                        any_masked = True
                        _mark_masked(ax, float(masked[position]), label=r == 0)
                    if scale_bar:
                        _add_scale_bar(ax, pixel_m, scaled.shape[-1])
                        scale_bar = False
                else:
                    ax.set_facecolor("0.9")
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=6,
                            transform=ax.transAxes)
                if i == 0 and r == 0:
                    ax.set_title(calendar.month_abbr[month], fontsize=9)
    heading = f"{corpus[0].upper()}{corpus[1:]}: monthly images, {year}" if corpus else (
        f"Monthly images, {year}")
    masked_note = ("\nred frame: pixels masked on that date (PF-QA flag or nodata), their share "
                   "in the corner" if any_masked else "")
    fig.suptitle(
        f"{heading}\ntrue colour (R, G, B) and false colour (NIR, R, G), first date of each "
        f"month, stretched per site ({percentiles[0]:g}-{percentiles[1]:g} percentiles)"
        f"{masked_note}",
        fontsize=10, y=1 - 0.1 / height, va="top",
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

    `profiles` is the tidy table of `exploration.class_time_profiles`; every year it holds
    is pooled by calendar month.
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
        class_handle(name, f"{name} ({sites[name]} site{'' if sites[name] == 1 else 's'})")
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
