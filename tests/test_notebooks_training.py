"""Training figures (plots/training.py) on hand-made results, and notebooks 03-04 end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from rapid_utils import byol, labels, paths, plots, train
from rapid_utils.corpus.synthetic import generate_corpus

DATES = ["2018-01-03", "2018-04-03", "2018-07-02", "2018-10-05"]
TINY = {"arch": "resnet18", "epochs": 1, "batch_size": 8, "num_workers": 0, "seed": 0,
        "split_by": "site", "stats_sites": 4}
NOTEBOOKS = {
    "03_byol_pretraining": {"image_size": 16, "positives": "augment"},
    "04_finetuning": {"init": "byol", "positives": "augment", "label_fraction": 0.1,
                      "min_samples_per_epoch": 0},
}
FIGURES = [
    "byol_history_augment_seed0",
    "byol_embedding_augment_seed0",
    "finetune_curves_init-byol_frac-0.1_seed-0",
    "precision_recall_init-byol_frac-0.1_seed-0",
    "confusion_init-byol_frac-0.1_seed-0",
]


def fake_results(n_epochs: int = 3) -> dict:
    """A results file's content (the unversioned form) with a known confusion matrix."""
    confusion = np.diag([5, 4, 3, 2, 1, 1, 2])
    confusion[1, 0] = 5  # half of the agricultural sites predicted as artificial
    confusion[5] = 0  # no wetlands site in the test split
    final = {
        "accuracy": 0.7, "macro_f1": 0.6, "n": int(confusion.sum()),
        "precision": {name: 0.1 * (k + 1) for k, name in enumerate(labels.CLASSES)},
        "recall": {name: 0.9 - 0.1 * k for k, name in enumerate(labels.CLASSES)},
        "confusion_matrix": confusion.tolist(),
    }
    return {
        "parameters": {"arch": "resnet18", "init": "byol:/x/checkpoint.pt",
                       "label_fraction": 0.1, "linear_probe": False, "seed": 0},
        "per_epoch": {
            "train_loss": list(np.linspace(2.0, 1.0, n_epochs)),
            "val_accuracy": list(np.linspace(0.3, 0.6, n_epochs)),
            "test_accuracy": list(np.linspace(0.3, 0.7, n_epochs)),
            "lr": [1e-3] * n_epochs,
        },
        "final": {"test": final, "val": final},
        "complete": True,
    }


def test_pretraining_history_has_loss_std_with_reference_and_knn() -> None:
    history = [{"epoch": e, "loss": 1.5 / e, "projection_std": 0.02 * e, "knn_accuracy": 0.2 * e,
                "encoder_change": 0.1 * e, "lr": 0.1, "tau": 0.99} for e in (1, 2, 3)]
    fig = plots.plot_pretraining_history(history, projection_dim=64)
    assert isinstance(fig, Figure)
    loss_ax, std_ax, knn_ax, change_ax = fig.axes
    assert list(change_ax.lines[0].get_ydata()) == pytest.approx([10, 20, 30])
    assert list(loss_ax.lines[0].get_ydata()) == [h["loss"] for h in history]
    reference = [line.get_ydata()[0] for line in std_ax.lines[1:]]
    assert reference[0] == pytest.approx(1 / 8) and reference[1] == 0
    assert list(knn_ax.lines[0].get_ydata()) == pytest.approx([20, 40, 60])


def test_pretraining_history_loss_axis_spans_the_losses_logged() -> None:
    """The loss is summed over both view orders (BYOL.forward), so it lies in [0, 8]; the axis
    spans the losses logged, so that a fall from 0.30 to 0.25 is not a flat line at the bottom."""
    p = torch.ones(2, 4)
    worst = float(byol.byol_loss(p, -p) + byol.byol_loss(-p, p))  # opposite projections
    assert worst == pytest.approx(8.0)
    for losses in ([6.0, 3.0, 2.0], [0.30, 0.27, 0.25], [7.9, 7.95, 8.0]):
        history = [{"epoch": e, "loss": loss, "projection_std": 0.02, "knn_accuracy": 0.5,
                    "encoder_change": 0.1} for e, loss in enumerate(losses, start=1)]
        loss_ax = plots.plot_pretraining_history(history).axes[0]
        low, high = loss_ax.get_ylim()
        assert 0 <= low < min(losses) and max(losses) < high  # every loss in view
        # and the axis fits them (a nearly flat curve keeps a margin of a few % of its level)
        assert high - low < max(1.5 * (max(losses) - min(losses)), 0.1 * max(losses))
        assert "at most 8" in loss_ax.get_ylabel()


def test_pretraining_history_draws_the_majority_class_when_given() -> None:
    history = [{"epoch": e, "loss": 1.0 / e, "projection_std": 0.02, "knn_accuracy": 0.2 * e,
                "encoder_change": 0.1} for e in (1, 2, 3)]
    knn_ax = plots.plot_pretraining_history(history, majority=0.4).axes[2]
    majority = [line for line in knn_ax.lines if line.get_label().startswith("majority")]
    assert len(majority) == 1 and majority[0].get_ydata()[0] == pytest.approx(40)
    legend = [t.get_text() for t in knn_ax.get_legend().get_texts()]
    assert legend == ["kNN on encoder features", "majority class (40 %)"]
    plain = plots.plot_pretraining_history(history).axes[2]
    assert len(plain.lines) == 1 and plain.get_legend() is None


def test_embedding_is_two_dimensional_and_coloured_by_class() -> None:
    rng = np.random.default_rng(0)
    class_ids = np.array([0, 0, 1, 1, 2, 6, 6, 6])
    features = rng.normal(size=(len(class_ids), 16)) + class_ids[:, None]
    fig = plots.plot_embedding(features, class_ids)
    (ax,) = fig.axes
    assert len(ax.collections) == 4  # one scatter per class present
    assert sum(len(c.get_offsets()) for c in ax.collections) == len(class_ids)
    colours = {tuple(c.get_facecolor()[0][:3]) for c in ax.collections}
    assert len(colours) == 4
    assert "PC 1" in ax.get_xlabel()


def test_finetune_curves_precision_recall_and_confusion() -> None:
    results = fake_results()
    loss_ax, acc_ax = plots.plot_finetune_curves(results).axes
    assert len(loss_ax.lines[0].get_xdata()) == 3
    assert [line.get_label() for line in acc_ax.lines] == ["val", "test"]
    assert "init byol" in plots.plot_finetune_curves(results)._suptitle.get_text()

    (ax,) = plots.plot_precision_recall(results).axes
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * len(labels.CLASSES)
    assert heights[:7] == pytest.approx([10 * (k + 1) for k in range(7)])  # precision in %
    assert [t.get_text() for t in ax.get_xticklabels()] == list(labels.CLASSES)

    fig = plots.plot_confusion(results)
    ax = fig.axes[0]
    shares = np.ma.filled(ax.collections[0].get_array().astype(float), np.nan).reshape(7, 7)
    assert shares[1, 0] == pytest.approx(5 / 9) and shares[1, 1] == pytest.approx(4 / 9)
    assert np.isnan(shares[5]).all()  # a class without test sites is left blank
    assert np.nansum(shares, axis=1)[[0, 1, 2, 3, 4, 6]] == pytest.approx(np.ones(6))
    assert [t.get_text() for t in ax.get_xticklabels()] == list(labels.CLASSES)


@pytest.mark.slow
def test_notebooks_pretrain_then_finetune(tmp_path: Path, run_notebooks) -> None:
    corpus = generate_corpus(tmp_path / "c", n_sites=30, seed=2, size=16, dates=DATES,
                             workers=1, progress=False)
    figures, runs = tmp_path / "figures", tmp_path / "runs"
    run_notebooks({name: TINY | p for name, p in NOTEBOOKS.items()}, corpus, tmp_path)

    checkpoint = runs / "byol" / "byol_augment_seed0" / train.CHECKPOINT_FILE
    assert checkpoint.is_file()
    assert (runs / paths.BAND_STATS_FILE).is_file()  # computed by 03, read by 04
    results_file = runs / "results" / "finetune_init-byol_frac-0.1_seed-0.json"
    results = json.loads(results_file.read_text())
    assert results["complete"]
    assert results["parameters"]["init"] == f"byol:{checkpoint.resolve()}"
    assert results["parameters"]["label_fraction"] == 0.1 and results["parameters"]["epochs"] == 1
    assert all(math.isfinite(results["final"][s]["accuracy"]) for s in ("val", "test"))
    for figure in FIGURES:
        assert (figures / f"{figure}.png").is_file(), figure
        assert (figures / f"{figure}.pdf").is_file(), figure
