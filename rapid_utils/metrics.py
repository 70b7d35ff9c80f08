"""Evaluation metrics: the poster's classification scores and BYOL collapse guards (the kNN guard
uses `evaluation`'s kNN)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from rapid_utils.labels import CLASSES

# An encoder whose weights end pretraining closer than this (relative distance) to their random
# initialisation has hardly trained: measured 0.02 after 460 steps with a too small LARS rate,
# 0.2 after 90 steps with a working one.
MIN_ENCODER_CHANGE = 0.05


def classification_metrics(y_true, y_pred, n_classes: int = 7,
                           class_names: Sequence[str] | None = None) -> dict:
    """Overall accuracy, macro-F1, per-class precision/recall (poster Fig. 5) and confusion matrix.

    Every class (`class_names`, by default the first `n_classes` poster classes) appears in
    the per-class entries, in class-index order, with 0 where a class is never predicted or
    absent, so results files of small runs keep one shape. The confusion matrix is nested
    lists, rows true and columns predicted classes.
    """
    names = list(class_names) if class_names is not None else list(CLASSES[:n_classes])
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    classes = list(range(len(names)))
    precision, recall, _, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, average=None, zero_division=0
    )
    macro_f1 = f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(macro_f1),
        "precision": {name: float(p) for name, p in zip(names, precision, strict=True)},
        "recall": {name: float(r) for name, r in zip(names, recall, strict=True)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "n": int(len(y_true)),
    }


def projection_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised projections (N, d).

    About 1/sqrt(d) for well-spread projections and 0 when BYOL has collapsed to a constant.
    """
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean())


def weight_snapshot(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the encoder's weight matrices and kernels (not biases or norms), on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in encoder.named_parameters() if p.dim() > 1}


def relative_change(encoder: torch.nn.Module, initial: dict[str, torch.Tensor]) -> float:
    """||w - w0|| / ||w0|| over the weights in `initial`: how far training moved the encoder."""
    current = dict(encoder.named_parameters())
    moved = sum(float((current[n].detach().cpu() - w0).norm() ** 2) for n, w0 in initial.items())
    return (moved / sum(float(w0.norm() ** 2) for w0 in initial.values())) ** 0.5
