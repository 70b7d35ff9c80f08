"""Realism figures: embedded chips beside real Sentinel-2 chips, and the realism table's
statistics, embedded against real with the real chips' tolerance (`rapid_utils.realism`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rapid_utils.corpus import layout
from rapid_utils.plots.common import CLASS_COLORS
from rapid_utils.plots.corpus import BAND_COLORS, TRUE_COLOUR, _stretch

REAL_STYLE = {"color": "black", "linewidth": 1.2}
EMBEDDED_MARKER = "o"


def plot_realism_chips(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
                       percentiles: tuple[float, float] = (2, 98)) -> Figure:
    """Rows of embedded chips (left) beside real chips (right), true colour, one stretch.

    `pairs` maps a row caption to (embedded, real) reflectance chips (n, 4, S, S) at the same
    10 m scale (`realism.example_pairs`). Every chip of the figure shares one linear stretch
    (see `corpus._stretch`), so brightness and contrast compare across sides and rows.
    """
    rows = {caption: pair for caption, pair in pairs.items() if len(pair[0]) or len(pair[1])}
    if not rows:
        raise ValueError("no chips to plot")
    order = [layout.BANDS.index(b) for b in TRUE_COLOUR]
    n_columns = max(max(len(e), len(r)) for e, r in rows.values())
    everything = np.concatenate([c for pair in rows.values() for c in pair if len(c)])[:, order]
    stretched = iter(_stretch(everything, percentiles))
    fig = Figure(figsize=(2.2 + 2.6 * n_columns, 0.8 + 1.3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 2 * n_columns + 1, squeeze=False,
                        width_ratios=[1.6] + [1] * (2 * n_columns))
    for r, (caption, (embedded, real)) in enumerate(rows.items()):
        axes[r, 0].axis("off")
        axes[r, 0].text(1.0, 0.5, caption, ha="right", va="center", fontsize=8,
                        transform=axes[r, 0].transAxes)
        for side, chips in enumerate((embedded, real)):
            for k in range(n_columns):
                ax = axes[r, 1 + side * n_columns + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(chips):
                    ax.imshow(np.moveaxis(next(stretched), 0, -1), interpolation="nearest")
                else:
                    ax.axis("off")
                if r == 0 and k == 0:
                    ax.set_title(("embedded", "real Sentinel-2")[side], fontsize=9, loc="left")
    side = everything.shape[-1]
    fig.suptitle(f"Embedded (left) and real (right) chips at 10 m, {side} x {side} px "
                 f"({side * 10} m): true colour, one stretch for all "
                 f"({percentiles[0]:g}-{percentiles[1]:g} percentiles)", fontsize=10)
    return fig


def _quantile_panel(ax: Axes, rows: pd.DataFrame, key: str, colours: Mapping[str, str]) -> None:
    """Real quantiles as a line in a band of +- tolerance, embedded as markers (hollow when
    outside the tolerance), one colour per `key` value (band or class)."""
    for name, group in rows.groupby(key, sort=False):
        group = group.assign(q=group["statistic"].str[-2:].astype(int)).sort_values("q")
        colour = colours.get(name, "0.3")
        ax.plot(group["q"], group["real"], color=colour, linewidth=1.2)
        ax.fill_between(group["q"], group["real"] - group["tolerance"],
                        group["real"] + group["tolerance"], color=colour, alpha=0.18,
                        linewidth=0)
        ax.plot(group["q"], group["embedded"], color=colour, linestyle="--", linewidth=0.8)
        for within, marked in group.groupby("within"):
            ax.scatter(marked["q"], marked["embedded"], s=22, marker=EMBEDDED_MARKER,
                       edgecolors=colour, facecolors=colour if within else "white", zorder=3,
                       label=None)
    ax.set_xticks(sorted(rows["statistic"].str[-2:].astype(int).unique()))
    ax.set_xlabel("quantile (%)")


def _point_panel(ax: Axes, rows: pd.DataFrame, colours: Mapping[str, str]) -> None:
    """One x position per row (its band, or statistic): real +- tolerance as an error bar,
    embedded as a marker beside it (hollow when outside the tolerance)."""
    labels = [band if band != "all" else statistic.replace("_", "\n")
              for statistic, band in zip(rows["statistic"], rows["band"], strict=True)]
    for x, (_, row) in enumerate(rows.iterrows()):
        colour = colours.get(row["band"], "0.3")
        ax.errorbar(x - 0.12, row["real"], yerr=row["tolerance"], fmt="s", color="black",
                    markersize=4, capsize=3, linewidth=1)
        ax.scatter(x + 0.12, row["embedded"], s=30, marker=EMBEDDED_MARKER, edgecolors=colour,
                   facecolors=colour if row["within"] else "white", zorder=3)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)


def plot_realism_statistics(table: pd.DataFrame) -> Figure:
    """The realism table drawn: each statistic, embedded against real with its tolerance.

    Real values are black error bars or lines in a shaded band (real +- tolerance); embedded
    values are coloured markers, filled when within the tolerance and hollow when not.
    Panels without rows in `table` (e.g. no shared class) say so.
    """
    fig = Figure(figsize=(14, 7.6), layout="constrained")
    axes = fig.subplots(2, 3)
    panels = [
        (axes[0, 0], "reflectance_q", "band", "surface reflectance",
         "Reflectance quantiles (vs L2A pool)"),
        (axes[0, 1], "ndvi_q", "class", "NDVI", "NDVI quantiles per class (vs EuroSAT, L1C)"),
        (axes[0, 2], "gradient_q", "band", "gradient magnitude (reflectance per 10 m)",
         "Gradient magnitude quantiles (vs L2A pool)"),
    ]
    colours = BAND_COLORS | CLASS_COLORS
    for ax, prefix, key, ylabel, title in panels:
        rows = table[table["statistic"].str.startswith(prefix)]
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if rows.empty:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
            continue
        _quantile_panel(ax, rows, key, colours)
        ax.legend(handles=[Line2D([], [], color=colours.get(n, "0.3"), label=n)
                           for n in rows[key].unique()], fontsize=7, loc="upper left")
    axes[0, 2].set_yscale("log")
    points = [
        (axes[1, 0], ["spectral_slope"], "log-log slope", "Power spectrum slope (vs L2A pool)"),
        (axes[1, 1], ["heterogeneity"], "std / mean", "Within-chip heterogeneity (vs L2A pool)"),
        (axes[1, 2], ["imagestats_accuracy", "cnn_accuracy", "spatial_signal"], "accuracy",
         "Class signal: out-of-fold accuracy (vs EuroSAT)"),
    ]
    for ax, statistics, ylabel, title in points:
        rows = table[table["statistic"].isin(statistics)]
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if rows.empty:
            ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
            continue
        _point_panel(ax, rows, colours)
    axes[1, 2].axhline(0, color="0.6", linewidth=0.8)
    n_within = int(table["within"].sum())
    fig.legend(handles=[
        Line2D([], [], color="black", marker="s", markersize=4, label="real (± tolerance)"),
        Line2D([], [], color="0.3", marker=EMBEDDED_MARKER, linestyle="none",
               label="embedded, within tolerance"),
        Line2D([], [], color="0.3", marker=EMBEDDED_MARKER, markerfacecolor="white",
               linestyle="none", label="embedded, outside"),
    ], loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"Embedded corpus against real Sentinel-2 at 10 m: {n_within} of "
                 f"{len(table)} statistics within tolerance", fontsize=11)
    return fig


def plot_within_counts(counts: pd.DataFrame) -> Figure:
    """How many statistics lie within tolerance: a histogram of the real-against-real splits'
    counts (what real imagery itself scores) with the embedded counts marked, the first
    render seed's solid and any further seeds' dashed (`realism.within_counts`)."""
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    real = counts[counts["source"] == "real against real"]
    embedded = counts[counts["source"] == "embedded"]
    n_rows = int(embedded["rows"].iloc[0])
    ax.hist(real["within"], bins=np.arange(-0.5, n_rows + 1.5), color="0.55",
            label=f"real against real ({len(real)} random splits)")
    first, further = embedded.iloc[0], embedded["within"].iloc[1:].astype(int)
    ax.axvline(first["within"], color="tab:red", linewidth=2,
               label=f"embedded, render seed {first['split']}: {int(first['within'])}")
    further_label = "embedded, further render seeds: " + ", ".join(map(str, further))
    for k, within in enumerate(further):
        ax.axvline(within, color="tab:red", linewidth=1.2, linestyle="--",
                   label=None if k else further_label)
    ax.set_xlim(0, n_rows + 0.5)
    ax.set_xlabel(f"statistics within tolerance (of {n_rows}: band, NDVI and spatial rows)")
    ax.set_ylabel("splits")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Statistics within tolerance: embedded and real against real", fontsize=10)
    return fig
