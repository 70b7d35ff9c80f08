"""What every figure family shares: the class colours and markers, legend handles, run titles,
and writing a figure to disk."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from rapid_utils.results import RunResult

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


def save_figure(fig: Figure, directory: str | Path, name: str) -> Path:
    """Write `name.png` (150 dpi) and `name.pdf` into `directory`; return the PNG's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{name}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(directory / f"{name}.pdf", bbox_inches="tight")
    return png


def add_caption(fig: Figure, text: str, width: int = 140) -> None:
    """A note below the axes (what a mark means, what is not drawn and why), each line wrapped
    to `width` characters; the figure's `supxlabel`, so that constrained layout makes room."""
    if text:
        wrapped = "\n".join(textwrap.fill(line, width) for line in text.splitlines())
        fig.supxlabel(wrapped, x=0.01, ha="left", fontsize=8, color="0.25")


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


def class_handle(name: str, label: str, styles: Mapping[str, tuple[str, str]] | None = None
                 ) -> Line2D:
    """A legend entry with the class's marker and colour (from `styles`, else `class_styles`)."""
    colour, marker = (styles or class_styles([name]))[name]
    return Line2D(
        [], [], linestyle="none", marker=marker, markersize=7,
        markerfacecolor=colour, markeredgecolor="0.2", markeredgewidth=0.5,
        label=label,
    )


def run_title(run: RunResult) -> str:
    """A one-line title naming a fine-tuning run: architecture, init, label share, seed."""
    p = run.parameters
    probe = ", linear probe" if p.get("linear_probe") else ""
    init = "byol" if str(p["init"]).startswith("byol:") else p["init"]
    return (f"{p['arch']}, init {init}, {100 * p['label_fraction']:g} % of labels{probe}, "
            f"seed {p['seed']}")
