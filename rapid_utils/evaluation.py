"""Label efficiency of frozen features: few-label subsets, kNN, linear probe, imagestats, intervals.

The protocol follows SSL4EO-S12 and GEO-Bench: for each repeat, a stratified train/test split of
the labelled items, then 1, 5, 10, ... labels per class drawn from its train part (nested), each
encoder evaluated on the same subsets (a paired comparison), and the mean over repeats reported
with a Student-t interval. Everything here is numpy / scikit-learn on arrays; the torch side
(encoders to feature arrays, fine-tuning) produces records with the same columns.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from rapid_utils.io import atomic_path

LABELS_PER_CLASS: tuple[int | None, ...] = (1, 5, 10, None)  # None = every training label
EVALUATIONS = ("knn", "linear-probe")  # frozen-feature evaluations ("finetune" rows come elsewhere)
RECORD_COLUMNS = ("encoder", "evaluation", "labels_per_class", "repeat", "accuracy", "macro_f1",
                  "n_train", "n_test")

KNN_TEMPERATURE = 0.07  # kNN vote weight exp(similarity / T), as DINO and solo-learn
PROBE_C_GRID = 10.0 ** np.arange(-3, 4)  # inverse regularisation strengths tried by inner CV
PROBE_FIXED_C = 1.0  # with one label per class no inner CV is possible: sklearn's default C
_PERCENTILES = (5, 25, 50, 75, 95)
_EVALUATION_ORDER = ("knn", "linear-probe", "finetune")  # table and panel order; others follow


@dataclass(frozen=True)
class FewLabelSubset:
    """One repeat's training subset at `labels_per_class` labels per class, and its test part."""

    repeat: int
    labels_per_class: int | None  # None = all
    train: np.ndarray  # int indices into the labelled set
    test: np.ndarray  # int indices: the repeat's test part (same for every k of a repeat)


def few_label_subsets(
    labels: np.ndarray,
    labels_per_class: Sequence[int | None] = LABELS_PER_CLASS,
    repeats: int = 10,
    test_share: float = 0.5,
    seed: int = 0,
) -> list[FewLabelSubset]:
    """Nested few-label training subsets and a stratified test part, per repeat.

    Per repeat `r` (random state seeded by `(seed, r)`) each class is shuffled once: its first
    `round(test_share * n)` items (at least 1, at most n - 1) go to test, and the k-per-class
    training subset is the first k of the rest, so the subsets are nested across k and a class
    with fewer than k training items gives all it has. The result depends on (labels, arguments)
    only, so every encoder evaluated with one call sees identical subsets. Ordered by repeat,
    then by `labels_per_class` as given; indices are sorted.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    for k in labels_per_class:
        if k is not None and (not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1):
            raise ValueError(f"labels_per_class entries must be integers >= 1 or None, got {k!r}")
    if not isinstance(repeats, numbers.Integral) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must lie strictly between 0 and 1, got {test_share!r}")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        rare = classes[counts < 2].tolist()
        raise ValueError(f"every class needs at least 2 items (one train, one test); "
                         f"classes with fewer: {rare}")
    members = [np.flatnonzero(labels == c) for c in classes]

    # Hand-written rather than StratifiedShuffleSplit: that one shares the test size out over
    # classes by largest remainder, so a class of 2 or 3 items can end up wholly on one side.
    subsets = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        test_parts, train_orders = [], []
        for items in members:
            shuffled = rng.permutation(items)
            n_test = int(np.clip(np.rint(test_share * len(items)), 1, len(items) - 1))
            test_parts.append(shuffled[:n_test])
            train_orders.append(shuffled[n_test:])
        test = np.sort(np.concatenate(test_parts))
        for k in labels_per_class:
            train = np.sort(np.concatenate([order[:k] for order in train_orders]))
            subsets.append(FewLabelSubset(repeat=r, labels_per_class=None if k is None else int(k),
                                          train=train, test=test))
    return subsets


def _check_features(train_x, train_y, test_x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train_x, train_y, test_x = np.asarray(train_x), np.asarray(train_y), np.asarray(test_x)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x and test_x must be 2-D with equal feature counts, got "
                         f"{train_x.shape} and {test_x.shape}")
    if len(train_y) != len(train_x) or len(train_x) == 0:
        raise ValueError(f"need one label per training item and at least one item, got "
                         f"{len(train_x)} items and {len(train_y)} labels")
    return train_x, train_y, test_x


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                k: int = 20) -> np.ndarray:
    """Labels of `test_x` by a similarity-weighted vote of its k cosine-nearest training items.

    k is capped at the number of training items. Each neighbour votes with weight
    exp(cosine similarity / `KNN_TEMPERATURE`), as DINO and solo-learn evaluate: a uniform vote
    would make 1 label per class with k >= the number of classes an all-way tie. A tie in
    summed weight goes to the class that sorts first among the training labels (scikit-learn's
    `weighted_mode`).
    """
    train_x, train_y, test_x = _check_features(train_x, train_y, test_x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine",
                               weights=_similarity_weights)
    return knn.fit(train_x, train_y).predict(test_x)


def _similarity_weights(distances: np.ndarray) -> np.ndarray:
    """Vote weights from cosine distances (1 - similarity)."""
    return np.exp((1.0 - distances) / KNN_TEMPERATURE)


def linear_probe_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                         seed: int = 0) -> np.ndarray:
    """Labels of `test_x` by a logistic-regression probe on standardised frozen features.

    C is picked from `PROBE_C_GRID` by stratified inner cross-validation (accuracy; folds =
    min(5, smallest class count), shuffled with `seed`) on the training labels only; equal
    scores go to the smaller C, the stronger regularisation. With a class of one training item
    no inner CV is possible and C is `PROBE_FIXED_C`.
    """
    train_x, train_y, test_x = _check_features(train_x, train_y, test_x)
    _, counts = np.unique(train_y, return_counts=True)
    if len(counts) < 2:
        raise ValueError("a linear probe needs at least 2 classes among the training labels")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_FIXED_C, max_iter=5000))
    if counts.min() >= 2:
        folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True,
                                random_state=seed)
        probe = GridSearchCV(probe, {"logisticregression__C": PROBE_C_GRID}, cv=folds,
                             scoring="accuracy")
    return probe.fit(train_x, train_y).predict(test_x)


def imagestats_features(images: np.ndarray) -> np.ndarray:
    """GEO-Bench's "imagestats" baseline: per band nan-mean, nan-std, 5/25/50/75/95 % percentiles.

    `images` is (N, C, H, W), or (N, T, C, H, W) for several dates of a site (dates and pixels
    pooled), NaN marking nodata. Returns (N, C * 7) float64, band by band in that order of
    statistics. A band with no valid pixel in an item gives NaN statistics for that item.
    """
    images = np.asarray(images)
    if images.ndim == 5:
        images = np.moveaxis(images, 1, 2)  # (N, C, T, H, W): pool dates with pixels
    elif images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (N, T, C, H, W), got {images.shape}")
    n, c = images.shape[:2]
    features = np.empty((n, c, 2 + len(_PERCENTILES)))
    # One item at a time: nanpercentile copies and sorts its input, and a whole corpus of
    # time series at once would need several times its memory.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "Degrees of freedom", RuntimeWarning)
        for i in range(n):
            pixels = images[i].reshape(c, -1).astype(np.float64)
            features[i, :, 0] = np.nanmean(pixels, axis=1)
            features[i, :, 1] = np.nanstd(pixels, axis=1)
            features[i, :, 2:] = np.nanpercentile(pixels, _PERCENTILES, axis=1).T
    return features.reshape(n, -1)


def score(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro F1) with F1 averaged over the classes present in `y_true`."""
    present = np.unique(y_true)
    macro_f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    return float(accuracy_score(y_true, y_pred)), float(macro_f1)


def evaluate_frozen(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    subsets: Sequence[FewLabelSubset],
    evaluations: Sequence[str] = EVALUATIONS,
    knn_k: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Score every encoder's features (name -> (N, D)) by each evaluation on each subset.

    One row per (encoder, evaluation, subset) with `RECORD_COLUMNS`; `labels_per_class` is the
    int k, or "all". Pass the same `subsets` for every encoder so the comparison is paired.
    """
    labels = np.asarray(labels)
    unknown = [e for e in evaluations if e not in EVALUATIONS]
    if unknown:
        raise ValueError(f"unknown evaluations {unknown}; choose from {EVALUATIONS}")
    for name, x in features.items():
        x = np.asarray(x)
        if x.ndim != 2 or len(x) != len(labels):
            raise ValueError(f"features of {name!r} must be ({len(labels)}, D), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"features of {name!r} hold NaN or infinite values (for imagestats: "
                             f"an item with a band that has no valid pixel)")
    top = max((int(np.max(part, initial=-1)) for s in subsets for part in (s.train, s.test)),
              default=-1)
    if top >= len(labels):
        raise ValueError(f"subsets index item {top}, but there are only {len(labels)} labels")
    predictors = {
        "knn": lambda tx, ty, qx: knn_predict(tx, ty, qx, k=knn_k),
        "linear-probe": lambda tx, ty, qx: linear_probe_predict(tx, ty, qx, seed=seed),
    }
    rows = []
    bar = tqdm(total=len(features) * len(evaluations) * len(subsets), desc="frozen evaluations",
               disable=not progress)
    for name, x in features.items():
        x = np.asarray(x)
        for evaluation in evaluations:
            for subset in subsets:
                predicted = predictors[evaluation](x[subset.train], labels[subset.train],
                                                   x[subset.test])
                accuracy, macro_f1 = score(labels[subset.test], predicted)
                rows.append({
                    "encoder": name, "evaluation": evaluation,
                    "labels_per_class": ("all" if subset.labels_per_class is None
                                         else subset.labels_per_class),
                    "repeat": subset.repeat, "accuracy": accuracy, "macro_f1": macro_f1,
                    "n_train": len(subset.train), "n_test": len(subset.test),
                })
                bar.update()
    bar.close()
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def _labels_per_class_value(value) -> int | str:
    """k as int, or "all"; also reads the strings a CSV round trip leaves ("5", "all")."""
    if value is None or value == "all":
        return "all"
    try:
        k = float(value)
    except (TypeError, ValueError):
        k = float("nan")
    if not (np.isfinite(k) and k >= 1 and k == int(k)):
        raise ValueError(f"labels_per_class must be an integer >= 1 or 'all', got {value!r}")
    return int(k)


def _mean_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float, float]:
    """(mean, std, low, high): the Student-t interval of the mean; NaN spread for one value."""
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(np.std(values, ddof=1))
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / np.sqrt(n)
    return mean, std, mean - half, mean + half


def paired_differences(records: pd.DataFrame, encoder: str, baseline: str,
                       confidence: float = 0.95) -> pd.DataFrame:
    """`encoder`'s accuracy minus `baseline`'s on the same subsets, per evaluation and labels
    per class: the mean difference over repeats, its Student-t interval and how many repeats
    `encoder` won.

    The paired reading of the study: both saw the same labels and test items in each repeat,
    so the spread that subsets cause cancels, and an interval that excludes 0 is a difference.
    """
    keys = ["evaluation", "labels_per_class", "repeat"]
    records = records.assign(
        labels_per_class=records["labels_per_class"].map(_labels_per_class_value))
    pairs = records[records["encoder"] == encoder].merge(
        records[records["encoder"] == baseline], on=keys, suffixes=("", "_baseline"))
    rows = []
    for (evaluation, k), group in pairs.groupby(["evaluation", "labels_per_class"], sort=False):
        difference = (group["accuracy"] - group["accuracy_baseline"]).to_numpy(np.float64)
        mean, _, low, high = _mean_interval(difference, confidence)
        rows.append({"encoder": encoder, "baseline": baseline, "evaluation": evaluation,
                     "labels_per_class": k, "n_repeats": len(group),
                     "difference_mean": mean, "difference_ci_low": low,
                     "difference_ci_high": high, "wins": int((difference > 0).sum())})
    return pd.DataFrame(rows)


def summarise(records: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean over repeats and its Student-t interval, per (encoder, evaluation, labels_per_class).

    Long format, with n_repeats, `<metric>_mean`, `_std`, `_ci_low`, `_ci_high` for accuracy and
    macro F1, mean n_train and n_test, and the `confidence` level. With one repeat the std and
    bounds are NaN (no spread to estimate). Rows: encoders in order of first appearance,
    evaluations knn, linear-probe, finetune then others, labels per class ascending, "all" last.
    """
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    records = records.assign(
        labels_per_class=records["labels_per_class"].map(_labels_per_class_value))
    keys = ["encoder", "evaluation", "labels_per_class"]
    duplicated = records.loc[records.duplicated([*keys, "repeat"]), [*keys, "repeat"]]
    if not duplicated.empty:
        raise ValueError(f"records hold a (encoder, evaluation, labels_per_class, repeat) key "
                         f"more than once, e.g. {duplicated.iloc[0].tolist()}")
    rows = []
    for (encoder, evaluation, k), group in records.groupby(keys, sort=False):
        n = len(group)
        row = {"encoder": encoder, "evaluation": evaluation, "labels_per_class": k,
               "n_repeats": n}
        for metric in ("accuracy", "macro_f1"):
            mean, std, low, high = _mean_interval(group[metric].to_numpy(np.float64), confidence)
            row |= {f"{metric}_mean": mean, f"{metric}_std": std,
                    f"{metric}_ci_low": low, f"{metric}_ci_high": high}
        row |= {"n_train_mean": group["n_train"].mean(), "n_test_mean": group["n_test"].mean(),
                "confidence": confidence}
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    encoders = list(dict.fromkeys(records["encoder"]))
    evaluations = [*_EVALUATION_ORDER,
                   *(e for e in dict.fromkeys(records["evaluation"]) if e not in _EVALUATION_ORDER)]
    order = summary.assign(
        _encoder=summary["encoder"].map(encoders.index),
        _evaluation=summary["evaluation"].map(evaluations.index),
        _k=summary["labels_per_class"].map(lambda k: np.inf if k == "all" else k),
    ).sort_values(["_encoder", "_evaluation", "_k"]).index
    return summary.loc[order].reset_index(drop=True)


def write_table(summary: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV (no index), atomically; return its path."""
    with atomic_path(path) as tmp:
        summary.to_csv(tmp, index=False)
    return Path(path)
