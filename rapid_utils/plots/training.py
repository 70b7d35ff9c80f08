"""Training figures: the BYOL diagram and pretraining history, the encoder's embedding, and one
fine-tuning run's curves and per-date accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from rapid_utils import labels
from rapid_utils.metrics import MIN_ENCODER_CHANGE
from rapid_utils.plots.common import class_handle, class_styles, run_title
from rapid_utils.results import RunResult, as_run


def plot_pretraining_history(
    history: Sequence[Mapping[str, float]], projection_dim: int = 256,
    majority: float | None = None,
) -> Figure:
    """BYOL loss, projection std (with the 1/sqrt(d) reference), kNN accuracy and the encoder's
    distance from its initialisation, per epoch.

    `history` is `train.pretrain`'s list of per-epoch dicts; `projection_dim` (the config's d)
    places the reference line of well-spread projections. `majority`, the share of the
    commonest class among the kNN's validation sites (the history does not hold it), draws
    the accuracy a classifier reaches by always answering that class. The loss axis spans
    the losses logged, not the loss's whole range (0 to 8), so that its fall stays visible.
    """
    table = pd.DataFrame(list(history))
    dim = projection_dim
    fig = Figure(figsize=(15.0, 3.6), layout="constrained")
    loss_ax, std_ax, knn_ax, change_ax = fig.subplots(1, 4)
    epochs = table["epoch"].to_numpy()
    loss_ax.plot(epochs, table["loss"], marker="o", color="0.2")
    loss_ax.set_title("BYOL loss")
    losses = table["loss"].to_numpy(dtype=float)
    losses = losses[np.isfinite(losses)]
    if losses.size:
        low, high = float(losses.min()), float(losses.max())
        pad = max(0.1 * (high - low), 0.02 * high, 1e-3)
        loss_ax.set_ylim(max(0.0, low - pad), high + pad)
    # summed over both view orders (BYOL.forward), each 2 - 2 cos in [0, 4]
    loss_ax.set_ylabel("loss, both view orders (at most 8)")
    std_ax.plot(epochs, table["projection_std"], marker="o", color="#1f5fbf", label="measured")
    std_ax.axhline(1 / np.sqrt(dim), color="#1b6e2d", linestyle="--",
                   label=f"1/√{dim}: well spread")
    std_ax.axhline(0, color="#d7263d", linestyle=":", label="0: collapsed")
    std_ax.set_ylim(bottom=-0.005)
    std_ax.set_title("Projection std (collapse guard)")
    std_ax.legend(fontsize=8)
    knn_ax.plot(epochs, 100 * table["knn_accuracy"], marker="o", color="#f0a202",
                label="kNN on encoder features")
    if majority is not None:
        knn_ax.axhline(100 * majority, color="0.3", linestyle="--",
                       label=f"majority class ({100 * majority:.0f} %)")
        knn_ax.legend(fontsize=8)
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
    ax.legend(handles=[class_handle(n, f"{n} ({counts[n]})", styles) for n in class_names
                       if counts[n]], title="class (sites)", fontsize=8, title_fontsize=8)
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    ax.set_title(f"Encoder features of {len(features):,} sites (PCA)")
    ax.grid(alpha=0.3)
    return fig


def plot_finetune_curves(results: RunResult | Mapping) -> Figure:
    """Training loss, validation and test accuracy per epoch of one fine-tuning run (a
    `RunResult` or what `train.finetune` returns)."""
    run = as_run(results)
    per_epoch = run.per_epoch
    epochs = np.arange(1, len(per_epoch["train_loss"]) + 1)
    fig = Figure(figsize=(10.0, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, per_epoch["train_loss"], marker="o", color="0.2")
    loss_ax.set_ylabel("cross-entropy")
    loss_ax.set_title("Training loss")
    for split, colour in (("val", "#1f5fbf"), ("test", "#d7263d")):
        # None (JSON null): test sites classified after the last epoch only
        acc_ax.plot(epochs, 100 * np.asarray(per_epoch[f"{split}_accuracy"], dtype=float),
                    marker="o", color=colour, label=split)
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel("overall accuracy (%)")
    acc_ax.set_title("Accuracy")
    acc_ax.legend(fontsize=8)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(run_title(run))
    return fig


def plot_per_date_accuracy(results: RunResult | Mapping, split: str = "test") -> Figure:
    """Accuracy of single-date predictions at each evaluation date, beside the voted accuracy.

    A run read from a file without `schema_version` has no per-date accuracy; the figure says so.
    """
    run = as_run(results)
    per_date = run.per_date_accuracy.get(split, {})
    fig = Figure(figsize=(max(5.0, 0.7 * len(per_date) + 2.5), 3.4), layout="constrained")
    ax = fig.subplots()
    if not per_date:
        ax.text(0.5, 0.5, "no per-date accuracy in this results file\n(no schema_version)",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    dates = sorted(per_date)
    ax.bar(range(len(dates)), [100 * per_date[d] for d in dates], color="#d7263d", alpha=0.8,
           label="one date")
    voted = 100 * run.final[split]["accuracy"]
    ax.axhline(voted, color="0.2", linestyle="--", label=f"vote over dates: {voted:.1f} %")
    ax.set_xticks(range(len(dates)), dates, rotation=45 if len(dates) > 6 else 0, ha="right"
                  if len(dates) > 6 else "center", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"{split.capitalize()} accuracy per evaluation date\n{run_title(run)}",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return fig


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
