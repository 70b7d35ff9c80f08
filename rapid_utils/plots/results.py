"""Results figures: a run's per-class scores and confusion, the scenarios' accuracy curves and
class scores (poster Figs. 4-5), and the label-efficiency study."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from rapid_utils import results
from rapid_utils.plots.common import class_styles, run_title
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
    legend entry and a title note for scenarios that could not run. Runs that classified
    their test sites after the last epoch only (the default) are drawn as validation
    accuracy per epoch, with the final test accuracy as a diamond.
    """
    fig = Figure(figsize=(9.0, 5.4), layout="constrained")
    ax = fig.subplots()
    keys = [s.key for s in results.ALL_SCENARIOS]
    every_epoch = bool(per_epoch["test_accuracy"].notna().all())
    curve = "test_accuracy" if every_epoch else "val_accuracy"
    for key in keys:
        rows = per_epoch[per_epoch["scenario"] == key]
        if rows.empty:
            continue
        if not every_epoch:
            final = rows.dropna(subset=["test_accuracy"])
            ax.scatter(final["epoch"].max(), 100 * final["test_accuracy"].mean(), marker="D",
                       s=60, color=SCENARIO_COLORS[key], edgecolor="black", zorder=3)
        by_epoch = rows.groupby("epoch")[curve]
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
    if not every_epoch:
        handles.append(Line2D([], [], color="0.5", marker="D", markeredgecolor="black",
                              linestyle="none", label="test accuracy after the last epoch"))
    for key in skipped or {}:
        if not (per_epoch["scenario"] == key).any():
            label = results.SCENARIO_BY_KEY[key].label if key in results.SCENARIO_BY_KEY else key
            handles.append(Line2D([], [], color=SCENARIO_COLORS.get(key, "0.5"), linestyle="none",
                                  marker="x", label=f"{label}: skipped"))
    ax.legend(handles=handles, fontsize=9, loc="best", framealpha=0.95)
    ax.set_xlabel("fine-tuning epoch", fontsize=11)
    ax.set_ylabel(f"{'test' if every_epoch else 'validation'} accuracy (%)", fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    title = (f"{'Test' if every_epoch else 'Validation'} accuracy per epoch: mean over seeds, "
             "band min to max (poster Fig. 4)")
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


def plot_label_efficiency(summary: pd.DataFrame, title: str = "") -> Figure:
    """Accuracy against labels per class, one panel per evaluation and classifier (a kNN for
    each k), one line per encoder.

    `summary` is `evaluation.summarise`'s table; the shaded band is its confidence interval
    over repeats (absent where one repeat left it NaN). Panels, in the summary's order, share the
    y axis and the categorical x positions (1, 5, 10, ..., "all"), so encoders compare within
    an evaluation.
    """
    if summary.empty:
        raise ValueError("the summary is empty: nothing to plot")
    panels = list(dict.fromkeys(zip(summary["evaluation"], summary["classifier"],
                                    strict=True)))  # summarise's order
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
    for ax, (evaluation, classifier) in zip(axes, panels, strict=True):
        rows = summary[(summary["evaluation"] == evaluation)
                       & (summary["classifier"] == classifier)]
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
        k = re.search(r"k=(\d+)", classifier) if evaluation == "knn" else None
        name = names.get(evaluation, evaluation) + (f", k = {k[1]}" if k else "")
        ax.set_title(f"{name} (n = {span} {noun})", fontsize=10)
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
