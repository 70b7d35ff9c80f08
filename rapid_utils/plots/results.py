"""Results figures: a run's per-class scores and confusion, the scenarios' accuracy curves and
class scores (poster Figs. 4-5), and the label-efficiency study."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from rapid_utils import evaluation, results
from rapid_utils.plots.common import add_caption, class_styles, run_title
from rapid_utils.results import RunResult, as_run

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
# One colour and marker per encoder in every figure, its network's scenario colour (a
# random-init network fine-tuned is "scratch"); imagestats takes Okabe-Ito orange. A network
# joined to imagestats ("imagestats+byol") keeps its network's colour and marker, drawn hollow
# with dashed whiskers (`encoder_style`).
ENCODER_COLORS: dict[str, str] = {
    "byol": SCENARIO_COLORS["byol-100%"],
    "random-init": SCENARIO_COLORS["scratch-100%"],
    "imagenet": SCENARIO_COLORS["imagenet-100%"],
    evaluation.IMAGESTATS: "#E69F00",  # orange
}
ENCODER_MARKERS: dict[str, str] = {
    "byol": SCENARIO_MARKERS["byol-100%"],
    "random-init": SCENARIO_MARKERS["scratch-100%"],
    "imagenet": SCENARIO_MARKERS["imagenet-100%"],
    evaluation.IMAGESTATS: "P",
}
JOINED_PREFIX = f"{evaluation.IMAGESTATS}+"  # label_efficiency.COMBINED: imagestats + a network
# Encoders outside the table: tab10 colours the palettes above do not use, in order.
_OTHER_COLORS = ("#8c564b", "#7f7f7f", "#bcbd22", "#17becf", "#9467bd", "#2ca02c")
_OTHER_MARKERS = "v^<>ph*"


def encoder_style(name: str, others: Sequence[str] = ()) -> dict:
    """Colour, marker, face colour and whisker line style of an encoder (`ENCODER_COLORS`);
    a joined "imagestats+<network>" looks like its network, hollow and dashed. An encoder
    outside the table takes the next of `_OTHER_COLORS` by its place in `others`."""
    joined = name.startswith(JOINED_PREFIX) and name != JOINED_PREFIX
    network = name.removeprefix(JOINED_PREFIX) if joined else name
    if network in ENCODER_COLORS:
        colour, marker = ENCODER_COLORS[network], ENCODER_MARKERS[network]
    else:
        k = list(others).index(network) if network in others else 0
        colour, marker = _OTHER_COLORS[k % len(_OTHER_COLORS)], _OTHER_MARKERS[k % 7]
    return {"color": colour, "marker": marker, "markerfacecolor": "white" if joined else colour,
            "linestyle": "--" if joined else "-"}


def plot_precision_recall(results: RunResult | Mapping, split: str = "test") -> Figure:
    """Per-class precision and recall bars (poster Fig. 5) of a run's final metrics (a
    `RunResult` or what `train.finetune` returns)."""
    run = as_run(results)
    final = run.final[split]
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
    fig.suptitle(run_title(run))
    return fig


def plot_confusion(results: RunResult | Mapping, split: str = "test") -> Figure:
    """Row-normalised confusion matrix (true class rows, predicted columns) of a run (a
    `RunResult` or what `train.finetune` returns)."""
    import seaborn as sns  # imported here: only this figure needs it

    run = as_run(results)
    matrix = np.asarray(run.final[split]["confusion_matrix"], dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.full_like(matrix, np.nan), where=rows > 0)
    names = list(run.final[split]["precision"])  # the run's classes, in index order
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
    fig.suptitle(run_title(run))
    return fig


def _brief(reason: str, width: int = 110) -> str:
    """The gist of a skip reason for a figure's note; the full text is in notebook 05."""
    gist = reason.splitlines()[0].split(" (")[0].split(". ")[0] if reason else "no reason"
    return textwrap.shorten(gist, width, placeholder="...")


def _not_drawn(keys: Sequence[str], skipped: Mapping[str, str] | None) -> str:
    """One line naming the scenarios a figure leaves out, each with the gist of its reason."""
    if not keys:
        return ""
    reasons = [
        f"{results.SCENARIO_BY_KEY[k].label if k in results.SCENARIO_BY_KEY else k} ("
        + (f"skipped: {_brief(skipped[k])}" if skipped and k in skipped else "no results")
        + ")"
        for k in keys
    ]
    return "Not drawn: " + "; ".join(reasons) + "."


def _seeds(n: int) -> str:
    return f"n = {n} seed{'' if n == 1 else 's'}"


def plot_accuracy_curves(per_epoch: pd.DataFrame, skipped: Mapping[str, str] | None = None
                         ) -> Figure:
    """Poster Fig. 4: accuracy per epoch per scenario, mean over seeds, min-max band.

    `per_epoch` is `results.per_epoch_table`. When every run classified its test sites after
    every epoch, the curves are test accuracy; otherwise (the default: after the last epoch
    only) they are validation accuracy, with the final test accuracy as a diamond, and the
    axis says so. Scenarios of `skipped` (scenario key -> reason) without rows are named in a
    note below the axes; the legend lists only what is drawn.
    """
    fig = Figure(figsize=(9.0, 5.6), layout="constrained")
    ax = fig.subplots()
    keys = [s.key for s in results.ALL_SCENARIOS]
    every_epoch = bool(per_epoch["test_accuracy"].notna().all())
    curve = "test_accuracy" if every_epoch else "val_accuracy"
    spread = False  # a min-max band is drawn (some scenario has two seeds or more)
    for key in keys:
        rows = per_epoch[per_epoch["scenario"] == key]
        if rows.empty:
            continue
        colour = SCENARIO_COLORS[key]
        if not every_epoch:
            final = rows.dropna(subset=["test_accuracy"])
            ax.scatter(final["epoch"].max(), 100 * final["test_accuracy"].mean(), marker="D",
                       s=60, color=colour, edgecolor="black", zorder=3)
        by_epoch = rows.groupby("epoch")[curve]
        mean, low, high = (100 * getattr(by_epoch, f)() for f in ("mean", "min", "max"))
        n_seeds = rows["seed"].nunique()
        if n_seeds > 1:
            spread = True
            ax.fill_between(mean.index, low, high, color=colour, alpha=0.15, linewidth=0)
        extra = key not in {s.key for s in results.SCENARIOS}
        ax.plot(mean.index, mean, color=colour, marker=SCENARIO_MARKERS[key], markersize=5,
                linewidth=1.8, linestyle=":" if extra else "-",
                label=f"{results.SCENARIO_BY_KEY[key].label} ({_seeds(n_seeds)})")
    handles, _ = ax.get_legend_handles_labels()
    if spread:
        handles.append(Patch(facecolor="0.5", alpha=0.25, label="min to max over seeds"))
    if not every_epoch:
        handles.append(Line2D([], [], color="0.5", marker="D", markeredgecolor="black",
                              linestyle="none", label="test accuracy after the last epoch"))
    ax.legend(handles=handles, fontsize=9, loc="best", framealpha=0.95)
    what = "test" if every_epoch else "validation"
    ax.set_xlabel("fine-tuning epoch", fontsize=11)
    ax.set_ylabel(f"{what} accuracy (%)", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.set_title(f"{what.capitalize()} accuracy per epoch, mean over seeds (poster Fig. 4)",
                 fontsize=10)
    notes = [] if every_epoch else [
        "Test sites were classified after the last epoch only: the lines are validation "
        "accuracy, the diamonds test accuracy after the last epoch (mean over seeds)."]
    notes.append(_not_drawn([k for k in (skipped or {})
                             if not (per_epoch["scenario"] == k).any()], skipped))
    add_caption(fig, "\n".join(n for n in notes if n))
    return fig


# The poster's three with all labels, then the 1 % pair (BYOL and its fair baseline).
FIG5_SCENARIOS = ("byol-100%", "imagenet-100%", "scratch-100%", "byol-1%", "scratch-1%")


def _per_seed_scores(runs: Sequence[RunResult], key: str, split: str = "test"
                     ) -> dict[int, Mapping]:
    """A scenario's final metrics per seed (the last file read where a seed repeats, as in
    `results.summary_table`)."""
    return {run.seed: run.final[split] for run in runs if results.scenario_of(run) == key}


def _test_sites(finals: Sequence[Mapping]) -> dict[str, tuple[int, int]]:
    """Per class, the fewest and most sites of that class the runs were tested on (row sums
    of their confusion matrices; one number where the runs share a test split)."""
    counts: dict[str, list[int]] = {}
    for final in finals:
        rows = np.asarray(final["confusion_matrix"]).sum(axis=1)
        for name, n in zip(final["precision"], rows, strict=True):  # class-index order
            counts.setdefault(name, []).append(int(n))
    return {name: (min(found), max(found)) for name, found in counts.items()}


def _share_name(fraction: float) -> str:
    return "all labels" if fraction == 1 else f"{100 * fraction:g} % of labels"


def plot_class_scores(summary: pd.DataFrame, skipped: Mapping[str, str] | None = None,
                      scenarios: Sequence[str] = FIG5_SCENARIOS,
                      runs: Sequence[RunResult] | None = None) -> Figure:
    """Poster Fig. 5: per-class precision and recall (means over seeds) of a few scenarios,
    one row of panels per label share (all labels, then 1 %).

    `summary` is `results.summary_table`; `runs`, the results it was made from, add whiskers
    from the lowest to the highest seed and the number of test sites per class to the tick
    labels (neither is in the summary). Scenarios absent from `summary` are named in a note
    below the axes, with the reason from `skipped` where given.
    """
    present = [k for k in scenarios if k in summary.index]
    missing = [k for k in scenarios if k not in summary.index]
    names = [c.removeprefix("precision_") for c in summary.columns if c.startswith("precision_")]
    fractions = sorted({results.SCENARIO_BY_KEY[k].label_fraction for k in present},
                       reverse=True) or [1.0]
    rows = [[k for k in present if results.SCENARIO_BY_KEY[k].label_fraction == f]
            for f in fractions]
    finals = {k: _per_seed_scores(runs, k) for k in present} if runs is not None else {}
    sites = _test_sites([f for by_seed in finals.values() for f in by_seed.values()])
    ticks = [name if name not in sites else
             f"{name}\n(n = {sites[name][0]}" + (f"-{sites[name][1]}" if sites[name][1]
                                                  != sites[name][0] else "") + ")"
             for name in names]
    fig = Figure(figsize=(3.0 + max(12.0, 1.7 * len(names)), 1.4 + 3.7 * len(rows)),
                 layout="constrained")
    axes = fig.subplots(len(rows), 2, sharey=True, squeeze=False)
    positions = np.arange(len(names))
    whiskers = None  # the first whiskers drawn, for the legend
    for row_axes, keys, fraction in zip(axes, rows, fractions, strict=True):
        width = 0.8 / max(len(keys), 1)
        for ax, metric in zip(row_axes, ("precision", "recall"), strict=True):
            for i, key in enumerate(keys):
                x = positions + (i - (len(keys) - 1) / 2) * width
                values = np.array([100 * summary.loc[key, f"{metric}_{c}"] for c in names])
                n = int(summary.loc[key, "n_seeds"])
                ax.bar(x, values, width=width, color=SCENARIO_COLORS[key], edgecolor="0.2",
                       linewidth=0.5, label=f"{summary.loc[key, 'label']} ({_seeds(n)})")
                by_seed = finals.get(key, {})
                if len(by_seed) > 1:
                    scores = 100 * np.array([[f[metric].get(c, 0.0) for c in names]
                                             for f in by_seed.values()])
                    below = np.clip(values - scores.min(axis=0), 0, None)
                    above = np.clip(scores.max(axis=0) - values, 0, None)
                    drawn = ax.errorbar(x, values, yerr=[below, above], fmt="none",
                                        ecolor="0.1", elinewidth=1.0, capsize=2.5,
                                        label="lowest to highest seed")
                    whiskers = drawn if whiskers is None else whiskers
            ax.set_xticks(positions, ticks, fontsize=9)
            ax.set_ylim(0, 105)
            ax.set_title(f"{metric} per class, {_share_name(fraction)} (test)", fontsize=11)
            ax.grid(axis="y", alpha=0.3)
        row_axes[0].set_ylabel("%, mean over seeds", fontsize=10)
    if present:  # beside the axes, so no bar can hide under it; the note goes below
        handles = [c for row_axes in axes for c in row_axes[0].containers
                   if isinstance(c, BarContainer)]
        handles += [whiskers] if whiskers else []
        fig.legend(handles=handles, labels=[h.get_label() for h in handles],
                   loc="outside right upper", fontsize=10)
    notes = []
    if sites:
        notes.append("n: test sites of the class.")
    elif runs is None:
        notes.append("Without the runs (argument runs) the figure has no spread over seeds "
                     "and no test-site counts.")
    notes.append(_not_drawn(missing, skipped))
    add_caption(fig, " ".join(n for n in notes if n))
    fig.suptitle("Per-class precision and recall on the test split (poster Fig. 5)",
                 fontsize=11)
    return fig


def plot_label_efficiency(summary: pd.DataFrame, title: str = "",
                          chance: float | None = None) -> Figure:
    """Accuracy against labels per class, one panel per evaluation and classifier (a kNN for
    each k), one marker per encoder with its interval as whiskers.

    `summary` is `evaluation.summarise`'s table; the whiskers are its confidence interval over
    repeats (absent where one repeat left it NaN). Labels per class (1, 5, 10, ..., "all")
    are categories, so points are not joined; encoders sit side by side within each. Panels,
    in the summary's order, share the y axis. Encoders keep their colour in every figure
    (`encoder_style`). `chance` (a share, e.g. 1 / number of classes) draws a dotted line in
    every panel; `title` (name the dataset in it) heads the figure.
    """
    if summary.empty:
        raise ValueError("the summary is empty: nothing to plot")
    panels = list(dict.fromkeys(zip(summary["evaluation"], summary["classifier"],
                                    strict=True)))  # summarise's order
    encoders = list(dict.fromkeys(summary["encoder"]))
    others = [e.removeprefix(JOINED_PREFIX) for e in encoders]
    others = [e for e in dict.fromkeys(others) if e not in ENCODER_COLORS]
    styles = {name: encoder_style(name, others) for name in encoders}
    levels = sorted(set(summary["labels_per_class"]),
                    key=lambda k: np.inf if k == "all" else float(k))
    position = {k: i for i, k in enumerate(levels)}
    step = min(0.14, 0.8 / len(encoders))
    offsets = {name: (j - (len(encoders) - 1) / 2) * step for j, name in enumerate(encoders)}
    names = {"knn": "kNN on frozen features", "linear-probe": "linear probe on frozen features",
             "finetune": "fine-tuning"}
    fig = Figure(figsize=(4.2 * len(panels) + 0.8, 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    drawn: dict[str, ErrorbarContainer] = {}  # encoder -> its first points, for the legend
    chance_line = None
    for ax, (evaluation_name, classifier) in zip(axes, panels, strict=True):
        rows = summary[(summary["evaluation"] == evaluation_name)
                       & (summary["classifier"] == classifier)]
        for encoder in encoders:
            points = rows[rows["encoder"] == encoder]
            if points.empty:
                continue
            style = styles[encoder]
            x = points["labels_per_class"].map(position).to_numpy(float) + offsets[encoder]
            mean = 100 * points["accuracy_mean"].to_numpy(float)
            low = 100 * points["accuracy_ci_low"].to_numpy(float)
            high = 100 * points["accuracy_ci_high"].to_numpy(float)
            container = ax.errorbar(
                x, mean, yerr=[mean - low, high - mean], linestyle="none",
                marker=style["marker"], markersize=6, color=style["color"],
                markerfacecolor=style["markerfacecolor"], markeredgecolor=style["color"],
                elinewidth=1.3, capsize=3, label=encoder,
            )
            for bars in container.lines[2]:
                bars.set_linestyle(style["linestyle"])
            drawn.setdefault(encoder, container)
        if chance is not None:
            chance_line = ax.axhline(100 * chance, color="0.35", linestyle=":", linewidth=1.3,
                                     zorder=0, label=f"chance ({100 * chance:.3g} %)")
        repeats = sorted(set(rows["n_repeats"].astype(int)))
        span = f"{repeats[0]}" if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
        noun = "repeat, no interval" if repeats == [1] else "repeats"
        k = re.search(r"k=(\d+)", classifier) if evaluation_name == "knn" else None
        name = names.get(evaluation_name, evaluation_name) + (f", k = {k[1]}" if k else "")
        ax.set_title(f"{name} (n = {span} {noun})", fontsize=10)
        ax.set_xticks(range(len(levels)), [str(k) for k in levels])
        ax.set_xlim(-0.5, len(levels) - 0.5)
        for boundary in np.arange(0.5, len(levels) - 1):  # categories, not a scale
            ax.axvline(boundary, color="0.85", linewidth=0.8, zorder=0)
        ax.set_xlabel("labels per class")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    confidence = summary["confidence"].iloc[0] if "confidence" in summary else None
    band = f"{100 * confidence:g} % CI" if confidence else "CI"
    handles = [drawn[name] for name in encoders if name in drawn]
    if chance_line is not None:
        handles.append(chance_line)
    fig.legend(handles=handles, labels=[h.get_label() for h in handles],
               loc="outside lower center", ncols=min(len(handles), 6), fontsize=9,
               title=f"whiskers: {band} of the mean over repeats", title_fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
