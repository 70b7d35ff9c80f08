"""The few-label protocol: subsets, frozen evaluations, summaries and paired differences.

The protocol follows SSL4EO-S12 and GEO-Bench: for each repeat, a stratified train/test split of
the labelled items, then 1, 5, 10, ... labels per class drawn from its train part (nested), each
encoder evaluated on the same subsets (a paired comparison), and the mean over repeats reported
with a Student-t interval; paired differences of frozen evaluations also get an interval from
a bootstrap over items (`bootstrap_differences`). Settings are chosen on `validation_subsets`,
which never read a repeat's test part. Everything here is numpy / scikit-learn on arrays; the
torch side (encoders to feature arrays, fine-tuning) produces records with the same columns.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rapid_utils.evaluation.classifiers import (
    KNN_K,
    knn_name,
    knn_predict,
    linear_probe_predict,
    probe_name,
    score,
)
from rapid_utils.evaluation.intervals import difference, mean_interval
from rapid_utils.io import atomic_path

LABELS_PER_CLASS: tuple[int | None, ...] = (1, 5, 10, None)  # None = every training label
EVALUATIONS = ("knn", "linear-probe")  # frozen-feature evaluations ("finetune" rows come elsewhere)
# `classifier` names what produced each number (`knn_name`, `probe_name`, the fine-tuned network)
RECORD_COLUMNS = ("encoder", "evaluation", "classifier", "labels_per_class", "repeat",
                  "accuracy", "macro_f1", "n_train", "n_test")
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


def validation_subsets(labels: np.ndarray, subsets: Sequence[FewLabelSubset],
                       test_share: float = 0.5, seed: int = 0) -> list[FewLabelSubset]:
    """The same protocol inside each repeat's training part: for choosing settings.

    Per repeat, the items outside its test part (its training part) are split again, per class, into
    a validation part (`test_share` of each class) and nested 1, 5, ... per-class training
    subsets (`few_label_subsets` with seed `(seed, 1000 + repeat)`), and those stand in for the
    repeat's subsets. The repeat's own test part is never read, so settings chosen on these
    scores leave the test repeats untouched. Classes with fewer than 2 training items in a
    repeat raise ValueError.
    """
    labels = np.asarray(labels)
    by_repeat: dict[int, list[FewLabelSubset]] = {}
    for subset in subsets:
        by_repeat.setdefault(subset.repeat, []).append(subset)
    chosen = []
    for repeat, group in by_repeat.items():
        pool = np.setdiff1d(np.arange(len(labels)), group[0].test)  # the training part
        classes, counts = np.unique(labels[pool], return_counts=True)
        if len(classes) < len(np.unique(labels)) or counts.min() < 2:
            found = dict(zip(classes.tolist(), counts.tolist(), strict=True))
            raise ValueError(f"the validation protocol needs at least 2 training items of every "
                             f"class in each repeat (one to train, one to validate); repeat "
                             f"{repeat} has {found}: lower test_share or label more items of "
                             f"the rare classes")
        inner = few_label_subsets(labels[pool], [s.labels_per_class for s in group], repeats=1,
                                  test_share=test_share, seed=seed * 1000 + 1000 + repeat)
        chosen += [FewLabelSubset(repeat=repeat, labels_per_class=s.labels_per_class,
                                  train=pool[s.train], test=pool[s.test]) for s in inner]
    return chosen


@dataclass(frozen=True)
class FrozenPredictions:
    """Per-repeat scores of frozen evaluations (`records`) and the predictions behind them.

    `predicted[(encoder, evaluation, classifier, labels_per_class, repeat)]` holds the
    predicted labels of that repeat's test items (`subsets`' test order), which a bootstrap
    over items needs (`bootstrap_differences`).
    """

    records: pd.DataFrame
    predicted: dict[tuple, np.ndarray]
    labels: np.ndarray
    subsets: tuple[FewLabelSubset, ...]


def evaluate_frozen(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    subsets: Sequence[FewLabelSubset],
    evaluations: Sequence[str] = EVALUATIONS,
    knn_k: int | Sequence[int] = KNN_K,
    seed: int = 0,
    progress: bool = False,
) -> FrozenPredictions:
    """Score every encoder's features (name -> (N, D)) by each evaluation on each subset.

    Records have one row per (encoder, evaluation, classifier, subset) with `RECORD_COLUMNS`;
    `labels_per_class` is the int k, or "all"; the kNN is run once per k of `knn_k` (each a
    `classifier`, `knn_name(k)`), the probe is `probe_name()`. Pass the same `subsets` for
    every encoder so the comparison is paired.
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
    ks = (knn_k,) if isinstance(knn_k, numbers.Integral) else tuple(knn_k)
    classifiers = [(evaluation, name, predict) for evaluation in evaluations for name, predict in (
        [(knn_name(k), lambda tx, ty, qx, k=k: knn_predict(tx, ty, qx, k=k)) for k in ks]
        if evaluation == "knn" else
        [(probe_name(), lambda tx, ty, qx: linear_probe_predict(tx, ty, qx, seed=seed))])]
    rows, predicted = [], {}
    bar = tqdm(total=len(features) * len(classifiers) * len(subsets),
               desc="frozen evaluations", disable=not progress)
    for name, x in features.items():
        x = np.asarray(x)
        for evaluation, classifier, predict in classifiers:
            for subset in subsets:
                guess = predict(x[subset.train], labels[subset.train], x[subset.test])
                accuracy, macro_f1 = score(labels[subset.test], guess)
                k = "all" if subset.labels_per_class is None else subset.labels_per_class
                predicted[(name, evaluation, classifier, k, subset.repeat)] = guess
                rows.append({
                    "encoder": name, "evaluation": evaluation, "classifier": classifier,
                    "labels_per_class": k, "repeat": subset.repeat, "accuracy": accuracy,
                    "macro_f1": macro_f1, "n_train": len(subset.train),
                    "n_test": len(subset.test),
                })
                bar.update()
    bar.close()
    return FrozenPredictions(pd.DataFrame(rows, columns=list(RECORD_COLUMNS)), predicted,
                             labels, tuple(subsets))


def bootstrap_differences(frozen: FrozenPredictions, encoder: str, baseline: str,
                          n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
                          ) -> pd.DataFrame:
    """`encoder`'s accuracy minus `baseline`'s, paired, with an interval that resamples items.

    Per (evaluation, classifier, labels per class): the mean over repeats of the accuracy
    difference on each repeat's test items, and its percentile interval over `n_boot`
    bootstrap draws of the labelled items (with replacement, the same draw for every repeat,
    each repeat's accuracy weighted by how often its test items were drawn). Repeats overlap
    in their test items, so a Student-t over repeats treats correlated repeats as independent
    and leaves out which items were labelled at all; resampling the items puts that sampling
    into the interval (GEO-Bench bootstraps the test set likewise).
    """
    labels, rows = frozen.labels, []
    test_of = {s.repeat: s.test for s in frozen.subsets}
    # item counts of each draw, (n_boot, N); float32 keeps 2,000 draws of 20,000 items at 160 MB
    draws = np.random.default_rng(seed).multinomial(
        len(labels), np.full(len(labels), 1 / len(labels)), size=n_boot).astype(np.float32)
    groups: dict[tuple, list[int]] = {}
    for key in frozen.predicted:
        if key[0] == encoder and (baseline, *key[1:]) in frozen.predicted:
            groups.setdefault(key[1:4], []).append(key[4])
    for (evaluation, classifier, k), repeats in groups.items():
        gain = np.zeros((len(repeats), len(labels)))  # correct(encoder) - correct(baseline)
        tested = np.zeros((len(repeats), len(labels)))
        for row, repeat in enumerate(repeats):
            test = test_of[repeat]
            truth = labels[test]
            gain[row, test] = ((frozen.predicted[(encoder, evaluation, classifier, k, repeat)]
                                == truth).astype(float)
                               - (frozen.predicted[(baseline, evaluation, classifier, k, repeat)]
                                  == truth))
            tested[row, test] = 1.0
        observed = float(np.mean(gain.sum(axis=1) / tested.sum(axis=1)))
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.nanmean((draws @ gain.T) / (draws @ tested.T), axis=1)
        low, high = np.nanpercentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)])
        rows.append({"encoder": encoder, "baseline": baseline, "evaluation": evaluation,
                     "classifier": classifier, "labels_per_class": k,
                     "n_repeats": len(repeats), "difference_mean": observed,
                     "bootstrap_ci_low": float(low), "bootstrap_ci_high": float(high),
                     "n_boot": n_boot})
    return pd.DataFrame(rows)


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


def paired_differences(records: pd.DataFrame, encoder: str, baseline: str,
                       confidence: float = 0.95) -> pd.DataFrame:
    """`encoder`'s accuracy minus `baseline`'s on the same subsets, per evaluation, classifier
    and labels per class: `intervals.difference` over the repeats both have (the mean
    difference, its Student-t interval and how many repeats `encoder` won).

    The paired reading of the study: both saw the same labels and test items in each repeat,
    so the spread that subsets cause cancels, and an interval that excludes 0 is a difference.
    """
    keys = ["evaluation", "classifier", "labels_per_class", "repeat"]
    records = records.assign(
        labels_per_class=records["labels_per_class"].map(_labels_per_class_value))
    pairs = records[records["encoder"] == encoder].merge(
        records[records["encoder"] == baseline], on=keys, suffixes=("", "_baseline"))
    rows = []
    for (evaluation, classifier, k), group in pairs.groupby(keys[:3], sort=False):
        found = difference(dict(zip(group["repeat"], group["accuracy"], strict=True)),
                           dict(zip(group["repeat"], group["accuracy_baseline"], strict=True)),
                           confidence)
        rows.append({"encoder": encoder, "baseline": baseline, "evaluation": evaluation,
                     "classifier": classifier, "labels_per_class": k, "n_repeats": len(group),
                     "difference_mean": found.mean, "difference_ci_low": found.ci_low,
                     "difference_ci_high": found.ci_high, "wins": found.wins})
    return pd.DataFrame(rows)


def summarise(records: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean over repeats and its Student-t interval, per (encoder, evaluation, classifier,
    labels_per_class).

    Long format, with n_repeats, `<metric>_mean`, `_std`, `_ci_low`, `_ci_high` for accuracy and
    macro F1, mean n_train and n_test, and the `confidence` level. With one repeat the std and
    bounds are NaN (no spread to estimate). Rows: encoders in order of first appearance,
    evaluations knn, linear-probe, finetune then others, classifiers in order of first
    appearance, labels per class ascending, "all" last.
    """
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    records = records.assign(
        labels_per_class=records["labels_per_class"].map(_labels_per_class_value))
    keys = ["encoder", "evaluation", "classifier", "labels_per_class"]
    duplicated = records.loc[records.duplicated([*keys, "repeat"]), [*keys, "repeat"]]
    if not duplicated.empty:
        raise ValueError(f"records hold a (encoder, evaluation, classifier, labels_per_class, "
                         f"repeat) key more than once, e.g. {duplicated.iloc[0].tolist()}")
    rows = []
    for (encoder, evaluation, classifier, k), group in records.groupby(keys, sort=False):
        n = len(group)
        row = {"encoder": encoder, "evaluation": evaluation, "classifier": classifier,
               "labels_per_class": k, "n_repeats": n}
        for metric in ("accuracy", "macro_f1"):
            mean, std, low, high = mean_interval(group[metric].to_numpy(np.float64), confidence)
            row |= {f"{metric}_mean": mean, f"{metric}_std": std,
                    f"{metric}_ci_low": low, f"{metric}_ci_high": high}
        row |= {"n_train_mean": group["n_train"].mean(), "n_test_mean": group["n_test"].mean(),
                "confidence": confidence}
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    encoders = list(dict.fromkeys(records["encoder"]))
    classifiers = list(dict.fromkeys(records["classifier"]))
    evaluations = [*_EVALUATION_ORDER,
                   *(e for e in dict.fromkeys(records["evaluation"]) if e not in _EVALUATION_ORDER)]
    order = summary.assign(
        _encoder=summary["encoder"].map(encoders.index),
        _evaluation=summary["evaluation"].map(evaluations.index),
        _classifier=summary["classifier"].map(classifiers.index),
        _k=summary["labels_per_class"].map(lambda k: np.inf if k == "all" else k),
    ).sort_values(["_encoder", "_evaluation", "_classifier", "_k"]).index
    return summary.loc[order].reset_index(drop=True)


def write_table(summary: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV (no index), atomically; return its path."""
    with atomic_path(path) as tmp:
        summary.to_csv(tmp, index=False)
    return Path(path)
