"""Evaluation: features, kNN, linear probe, imagestats, subsets, summaries, differences, figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rapid_utils import byol, evaluation, plots, results
from rapid_utils.evaluation import FewLabelSubset
from rapid_utils.train import pretraining

# Class sizes 30, 20, 12, 4, 2: half of each to test (15, 10, 6, 2, 1), the rest to train.
SIZES = (30, 20, 12, 4, 2)
LABELS = np.repeat(np.arange(len(SIZES)), SIZES)
TRAIN_SIZES = (15, 10, 6, 2, 1)


def _blobs(n_per_class: int, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters, one per class, apart in every dimension.

    (No pure-noise dimension: standardised on one item per class, it would weigh as much as
    the signal.)
    """
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(n_classes)
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centres[y] + rng.normal(scale=0.5, size=(len(y), n_classes)), y


def test_knn_reads_directions_from_the_training_mean():
    # The training mean is (0, 0) here: class 0 lies far away but on the query's side of it
    # (~72 degrees off), class 1 close by but opposite.
    train_x = np.array([[1.0, 3.0], [1.0, -3.0], [-1.0, 0.1], [-1.0, -0.1]])
    train_y = np.array([0, 0, 1, 1])
    assert np.allclose(train_x.mean(axis=0), 0)
    query = np.array([[0.3, 0.0]])
    euclidean = np.argsort(np.linalg.norm(train_x - query, axis=1))[:2]
    assert set(train_y[euclidean]) == {1}  # Euclidean distance would say class 1 ...
    assert evaluation.knn_predict(train_x, train_y, query, k=2).tolist() == [0]  # direction: 0
    # A shared offset (all features positive, as after a ReLU) changes nothing: raw cosine
    # similarities would all crowd near 1 and follow the offset instead.
    offset = np.array([1000.0, 1000.0])
    assert evaluation.knn_predict(train_x + offset, train_y, query + offset, k=2).tolist() == [0]
    rng = np.random.default_rng(0)
    x, y, q = rng.normal(size=(40, 8)), rng.integers(0, 4, 40), rng.normal(size=(25, 8))
    shift = rng.uniform(5, 50, size=8)
    assert (evaluation.knn_predict(x, y, q, k=5)
            == evaluation.knn_predict(x + shift, y, q + shift, k=5)).all()


def test_knn_votes_by_distance_so_one_label_per_class_is_not_a_tie():
    # One item per class and k = 5 > classes: a uniform vote would tie every class and pick
    # the one that sorts first; the distance-weighted vote picks the nearest.
    train_x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    train_y = np.array([3, 2, 1, 0])
    for item in range(4):
        query = train_x[item:item + 1] * 0.8 + 0.05
        assert evaluation.knn_predict(train_x, train_y, query, k=5).tolist() == [train_y[item]]
    # k = 1 is the nearest neighbour; k beyond the training set is capped
    assert evaluation.knn_predict(train_x, train_y, np.array([[0.1, 0.9]]), k=1).tolist() == [2]
    assert evaluation.knn_predict(train_x, train_y, np.array([[0.1, 0.9]]), k=99).tolist() == [2]
    with pytest.raises(ValueError, match="k must be >= 1"):
        evaluation.knn_predict(train_x, train_y, train_x, k=0)


def test_linear_probe_is_perfect_on_separable_data():
    train_x, train_y = _blobs(10)
    test_x, test_y = _blobs(20, seed=1)
    assert (evaluation.linear_probe_predict(train_x, train_y, test_x) == test_y).all()


def test_linear_probe_works_with_one_label_per_class():
    train_x, train_y = _blobs(1)
    test_x, test_y = _blobs(20, seed=1)
    assert (evaluation.linear_probe_predict(train_x, train_y, test_x) == test_y).all()
    with pytest.raises(ValueError, match="at least 2 classes"):
        evaluation.linear_probe_predict(train_x[:1], train_y[:1], test_x)


def _by_key(subsets: list[FewLabelSubset]) -> dict:
    return {(s.repeat, s.labels_per_class): s for s in subsets}


def test_few_label_subsets_are_stratified_nested_and_disjoint():
    subsets = evaluation.few_label_subsets(LABELS, repeats=3)
    assert len(subsets) == 3 * len(evaluation.LABELS_PER_CLASS)
    by_key = _by_key(subsets)
    for r in range(3):
        test = by_key[r, 1].test
        assert np.bincount(LABELS[test]).tolist() == [15, 10, 6, 2, 1]
        previous: set[int] = set()
        for k in evaluation.LABELS_PER_CLASS:
            subset = by_key[r, k]
            np.testing.assert_array_equal(subset.test, test)  # same test part for every k
            train = set(subset.train.tolist())
            assert not train & set(test.tolist())
            assert previous <= train  # nested
            previous = train
            # k per class, or all a class has (classes of 2 and 1 training items at k = 5)
            want = [n if k is None else min(k, n) for n in TRAIN_SIZES]
            assert np.bincount(LABELS[subset.train], minlength=len(SIZES)).tolist() == want
        assert len(previous) + len(test) == len(LABELS)  # "all": every item not in test
    assert not np.array_equal(by_key[0, None].test, by_key[1, None].test)  # repeats differ


def test_few_label_subsets_are_deterministic():
    first = evaluation.few_label_subsets(LABELS, repeats=2, seed=4)
    again = evaluation.few_label_subsets(LABELS, repeats=2, seed=4)
    other = evaluation.few_label_subsets(LABELS, repeats=2, seed=5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.test, b.test)
    assert any(not np.array_equal(a.train, c.train) for a, c in zip(first, other, strict=True))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels_per_class": (0,)}, "labels_per_class"),
    ({"repeats": 0}, "repeats"),
    ({"test_share": 0.0}, "test_share"),
    ({"test_share": 1.0}, "test_share"),
])
def test_few_label_subsets_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluation.few_label_subsets(LABELS, **kwargs)


def test_few_label_subsets_need_two_items_per_class():
    with pytest.raises(ValueError, match=r"at least 2 items.*\[7\]"):
        evaluation.few_label_subsets(np.array([0, 0, 7]))


def test_evaluate_frozen_pairs_encoders_on_identical_subsets():
    subsets = evaluation.few_label_subsets(LABELS, labels_per_class=(1, 5, None), repeats=2)
    rng = np.random.default_rng(0)
    features = {"a": rng.normal(size=(len(LABELS), 6)),
                "b": np.eye(len(SIZES), 3)[LABELS] + rng.normal(scale=0.1, size=(len(LABELS), 3))}
    frozen = evaluation.evaluate_frozen(features, LABELS, subsets)
    records = frozen.records
    assert list(records.columns) == list(evaluation.RECORD_COLUMNS)
    assert len(records) == 2 * 3 * len(subsets)  # kNN k = 5, 1-NN and the probe
    assert set(records["labels_per_class"]) == {1, 5, "all"}
    assert set(zip(records["evaluation"], records["classifier"], strict=True)) == {
        ("knn", "knn (k=5, centred + L2, distance-weighted)"),
        ("knn", "knn (k=1, centred + L2, distance-weighted)"),
        ("linear-probe", evaluation.probe_name())}
    # the predictions behind each record: its accuracy recomputed from them
    for row in records.itertuples():
        subset = next(s for s in subsets if s.repeat == row.repeat and (
            s.labels_per_class or "all") == row.labels_per_class)
        guess = frozen.predicted[(row.encoder, row.evaluation, row.classifier,
                                  row.labels_per_class, row.repeat)]
        assert np.mean(guess == LABELS[subset.test]) == pytest.approx(row.accuracy)
    keys = ["evaluation", "classifier", "labels_per_class", "repeat"]
    a, b = (records[records["encoder"] == e].set_index(keys)[["n_train", "n_test"]]
            for e in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)
    assert records["accuracy"].between(0, 1).all() and records["macro_f1"].between(0, 1).all()
    with pytest.raises(ValueError, match="'c'.*NaN"):
        evaluation.evaluate_frozen({"c": np.full((len(LABELS), 2), np.nan)}, LABELS, subsets)


def test_score_averages_f1_over_true_classes():
    accuracy, macro_f1 = evaluation.score(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2]))
    assert accuracy == 0.75
    # class 0: F1 1; class 1: precision 1, recall 0.5, F1 2/3; predicted-only class 2 left out
    assert macro_f1 == pytest.approx((1 + 2 / 3) / 2)


def test_imagestats_ignores_nodata():
    images = np.arange(2 * 2 * 2 * 3, dtype=np.float64).reshape(2, 2, 2, 3)
    images[0, 0, 0, 1] = np.nan
    images[1, 1] = np.nan  # a band with no valid pixel
    features = evaluation.imagestats_features(images)
    assert features.shape == (2, 2 * 7)
    valid = np.array([0.0, 2, 3, 4, 5])  # item 0, band 0 without its NaN
    assert features[0, 0] == pytest.approx(2.8)  # mean
    assert features[0, 1] == pytest.approx(np.std(valid))
    np.testing.assert_allclose(features[0, 2:7], np.percentile(valid, [5, 25, 50, 75, 95]))
    assert features[0, 4] == 3.0  # median
    assert np.isnan(features[1, 7:]).all() and np.isfinite(features[1, :7]).all()
    # several dates: pooled with the pixels
    dates = np.stack([images[:, :, :1], images[:, :, 1:]], axis=1)  # (N, T=2, C, 1, 3)
    np.testing.assert_allclose(evaluation.imagestats_features(dates), features)


def _records(values_by_k: dict, evaluation_name: str = "knn", encoder: str = "byol"
             ) -> pd.DataFrame:
    return pd.DataFrame([
        {"encoder": encoder, "evaluation": evaluation_name, "classifier": evaluation_name,
         "labels_per_class": k, "repeat": r, "accuracy": v, "macro_f1": v / 2, "n_train": 7,
         "n_test": 100}
        for k, values in values_by_k.items() for r, v in enumerate(values)
    ])


def test_summarise_interval_ordering_and_single_repeat():
    records = pd.concat([
        _records({"all": [0.9, 0.9], 10: [0.8], 1: [0.5, 0.6, 0.7, 0.8], 5: [0.7, 0.7]},
                 "finetune"),
        _records({1: [0.3]}, "knn"),
        _records({1: [0.1]}, "knn", encoder="random"),
    ])
    summary = evaluation.summarise(records)
    assert list(zip(summary["encoder"], summary["evaluation"], summary["labels_per_class"],
                    strict=True)) == [
        ("byol", "knn", 1), ("byol", "finetune", 1), ("byol", "finetune", 5),
        ("byol", "finetune", 10), ("byol", "finetune", "all"), ("random", "knn", 1)]
    row = summary.iloc[1]
    # mean 0.65, s = sqrt(0.05 / 3), t_{0.975, 3} = 3.1824 (t tables): half width 0.2054
    half = 3.1824 * np.sqrt(0.05 / 3) / np.sqrt(4)
    assert row["n_repeats"] == 4 and row["accuracy_mean"] == pytest.approx(0.65)
    assert row["accuracy_ci_low"] == pytest.approx(0.65 - half, abs=1e-4)
    assert row["accuracy_ci_high"] == pytest.approx(0.65 + half, abs=1e-4)
    assert row["macro_f1_ci_high"] == pytest.approx((0.65 + half) / 2, abs=1e-4)
    single = summary.iloc[3]
    assert single["accuracy_mean"] == pytest.approx(0.8)
    assert np.isnan(single[["accuracy_ci_low", "accuracy_ci_high", "macro_f1_ci_low"]]
                    .astype(float)).all()
    with pytest.raises(ValueError, match="more than once"):
        evaluation.summarise(pd.concat([records, records]))


def test_write_table_round_trips_and_summarise_reads_it(tmp_path):
    records = _records({1: [0.5, 0.6], "all": [0.9, 0.8]})
    path = evaluation.write_table(records, tmp_path / "records.csv")
    read = pd.read_csv(path)  # labels_per_class comes back as the strings "1" and "all"
    pd.testing.assert_frame_equal(evaluation.summarise(read), evaluation.summarise(records))


def test_plot_label_efficiency_has_one_panel_per_evaluation():
    records = pd.concat([
        _records({1: [0.3, 0.4], 5: [0.5, 0.6], "all": [0.8, 0.9]}, name, encoder)
        for name in ("knn", "finetune") for encoder in ("byol", "imagestats")
    ])
    fig = plots.plot_label_efficiency(evaluation.summarise(records), title="toy")
    assert isinstance(fig, Figure)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["kNN on frozen features",
                                                                    "fine-tuning"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "5", "all"]
    assert fig.get_suptitle() == "toy"
    fig.clear()


def test_plot_label_efficiency_draws_categories_with_intervals_and_chance():
    from matplotlib.container import ErrorbarContainer

    encoders = ("byol", "random-init", "imagestats", "imagestats+byol")
    records = pd.concat([_records({1: [0.3, 0.4], 5: [0.5, 0.6], "all": [0.8, 0.9]}, "knn", name)
                         for name in encoders])
    summary = evaluation.summarise(records)
    fig = plots.plot_label_efficiency(summary, title="EuroSAT", chance=1 / 7)
    (ax,) = fig.axes
    points = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in points] == list(encoders)  # one per encoder, with whiskers
    for container in points:
        marks = container.lines[0]
        assert marks.get_linestyle() == "None"  # categories: no slope drawn between them
        assert len(marks.get_xdata()) == 3
        (whiskers,) = container.lines[2]
        spans = np.array([s[:, 1] for s in whiskers.get_segments()])
        rows = summary[summary["encoder"] == container.get_label()]
        np.testing.assert_allclose(spans, 100 * rows[["accuracy_ci_low", "accuracy_ci_high"]])
    byol_x = points[0].lines[0].get_xdata()
    assert np.all(np.abs(byol_x - np.arange(3)) < 0.5)  # side by side within each category
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(100 / 7)
    # the legend names exactly what is drawn: the encoders' points, then the chance line
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*encoders, chance[0].get_label()]
    # encoders keep their network's colour in every figure; imagestats+byol is hollow byol
    colours = {c.get_label(): c.lines[0].get_color() for c in points}
    assert colours["byol"] == plots.SCENARIO_COLORS["byol-100%"]
    assert colours["random-init"] == plots.SCENARIO_COLORS["scratch-100%"]
    assert colours["imagestats+byol"] == colours["byol"]
    assert points[3].lines[0].get_markerfacecolor() == "white"
    assert points[3].lines[0].get_marker() == points[0].lines[0].get_marker()
    assert plots.encoder_style("imagenet")["color"] == plots.SCENARIO_COLORS["imagenet-100%"]
    assert "EuroSAT" in fig.get_suptitle()
    no_chance = plots.plot_label_efficiency(summary)
    assert not [line for line in no_chance.axes[0].get_lines()
                if line.get_label().startswith("chance")]


def test_paired_differences_cancel_what_the_subsets_share() -> None:
    # the subsets move both encoders by the same amount; only the +0.02 is the encoders' own
    shared = np.array([0.40, 0.60, 0.50, 0.70])
    rows = [{"encoder": name, "evaluation": "knn", "classifier": "knn", "labels_per_class": 5,
             "repeat": r, "accuracy": shared[r] + bonus, "macro_f1": 0.0, "n_train": 50,
             "n_test": 80}
            for name, bonus in (("byol", 0.02), ("random-init", 0.0)) for r in range(4)]
    records = pd.DataFrame(rows)
    paired = evaluation.paired_differences(records, "byol", "random-init")
    assert paired[["n_repeats", "wins"]].iloc[0].tolist() == [4, 4]
    assert paired["difference_mean"].iloc[0] == pytest.approx(0.02)
    assert paired["difference_ci_low"].iloc[0] == pytest.approx(0.02)  # no spread left
    unpaired = evaluation.summarise(records)
    assert (unpaired["accuracy_ci_low"] < unpaired["accuracy_mean"] - 0.1).all()  # wide apart


def test_difference_gives_the_numbers_of_both_former_implementations() -> None:
    # numbers of the two functions this one replaced (commit aae234b), on the same inputs
    rows = [{"encoder": name, "evaluation": "knn", "classifier": "knn", "labels_per_class": k,
             "repeat": r, "accuracy": value + (0.1 if k == "all" else 0.0), "macro_f1": 0.0,
             "n_train": 1, "n_test": 1}
            for name, values in (("byol", [0.62, 0.55, 0.71, 0.58, 0.66]),
                                 ("random-init", [0.50, 0.52, 0.61, 0.49, 0.57]))
            for k, repeats in ((5, range(5)), ("all", range(1)))
            for r, value in zip(repeats, values, strict=False)]
    paired = evaluation.paired_differences(pd.DataFrame(rows), "byol", "random-init")
    assert paired["classifier"].tolist() == ["knn", "knn"]
    assert paired[["n_repeats", "wins"]].to_numpy().tolist() == [[5, 5], [1, 1]]
    np.testing.assert_allclose(paired["difference_mean"], [0.086, 0.12], rtol=1e-12)
    np.testing.assert_allclose(paired["difference_ci_low"], [0.04426087785527886, np.nan],
                               rtol=1e-12)
    np.testing.assert_allclose(paired["difference_ci_high"], [0.12773912214472116, np.nan],
                               rtol=1e-12)

    by_seed = {"byol-100%": {0: 0.81, 1: 0.78, 2: 0.84},
               "scratch-100%": {0: 0.70, 1: 0.72, 2: 0.69},
               "byol-1%": {0: 0.40, 1: 0.47}, "scratch-1%": {0: 0.35, 5: 0.30, 6: 0.33}}
    summary = pd.DataFrame({"test_accuracy_by_seed": list(by_seed.values())}, index=list(by_seed))
    claims = results.poster_claims(summary)
    np.testing.assert_allclose(claims["difference_mean"], [10.66666666666668, -26.833333333333325,
                                                           10.833333333333334], rtol=1e-12)
    np.testing.assert_allclose(claims["spread"], [4.509249752822893, 5.180090089306681,
                                                  5.55277708298589], rtol=1e-12)
    assert claims["spread_method"].tolist() == [
        "std of per-seed differences (3 paired seeds)",
        "combined std sqrt(sa²+sb²) (2 vs 3 seeds, unpaired)",
        "combined std sqrt(sa²+sb²) (2 vs 3 seeds, unpaired)"]


class _Images(Dataset):
    """Items as our Datasets serve them: a dict with a float image and its label."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def _toy_images(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 4, 6, 6) images of 3 classes whose class shifts one band, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 4, 6, 6, generator=generator)
    images[torch.arange(n), labels] += 1.5
    return images, labels


def test_the_byol_guard_and_notebook_06_give_the_same_knn_accuracy() -> None:
    images, labels = _toy_images()
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 8))
    model = byol.BYOL(encoder, 8, hidden_dim=16, projection_dim=4)
    train_part, val_part = slice(0, 24), slice(24, 40)
    loaders = [DataLoader(_Images(images[part], labels[part]), batch_size=8)
               for part in (train_part, val_part)]
    guard = pretraining._collapse_guards(model, *loaders, 5, torch.device("cpu"))

    features, y = evaluation.extract_features(
        {"byol": encoder}, DataLoader(_Images(images, labels), batch_size=16), torch.device("cpu"))
    subset = FewLabelSubset(repeat=0, labels_per_class=None, train=np.arange(24),
                            test=np.arange(24, 40))
    records = evaluation.evaluate_frozen(features, y, [subset], evaluations=("knn",),
                                         knn_k=5).records
    assert records["classifier"].tolist() == [evaluation.knn_name(5)]
    assert guard["knn_accuracy"] == records["accuracy"].iloc[0]
    assert 0 < guard["knn_accuracy"] < 1  # neither trivial nor empty


def test_feature_extraction_leaves_the_global_rng_and_the_mode_as_they_were() -> None:
    images, labels = _toy_images(12)
    encoder = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 3))
    encoder.train()
    # without a generator a DataLoader draws its base seed from the global generator
    loader = DataLoader(_Images(images, labels), batch_size=5)
    before = torch.random.get_rng_state()
    list(loader)
    assert not torch.equal(torch.random.get_rng_state(), before)  # so the case can tell

    before = torch.random.get_rng_state()
    features, y = evaluation.extract_features({"e": encoder}, loader, torch.device("cpu"),
                                              imagestats=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert encoder.training  # put back in training mode
    assert list(features) == [evaluation.IMAGESTATS, "e"]
    np.testing.assert_array_equal(y, labels.numpy())
    with torch.no_grad():
        expected = encoder.eval()(images).numpy()  # eval mode: no dropout
    np.testing.assert_allclose(features["e"], expected, rtol=1e-6)
    np.testing.assert_allclose(features[evaluation.IMAGESTATS],
                               evaluation.imagestats_features(images.numpy()))


def test_validation_subsets_never_read_a_repeats_test_part():
    with pytest.raises(ValueError, match="at least 2 training items of every class"):
        evaluation.validation_subsets(LABELS, evaluation.few_label_subsets(LABELS, repeats=1))
    labels = np.repeat(np.arange(4), (30, 20, 12, 5))
    subsets = evaluation.few_label_subsets(labels, labels_per_class=(1, 5, None), repeats=3)
    chosen = evaluation.validation_subsets(labels, subsets, test_share=0.5, seed=0)
    assert [(s.repeat, s.labels_per_class) for s in chosen] == [
        (s.repeat, s.labels_per_class) for s in subsets]
    for inner in chosen:
        outer = next(s for s in subsets if s.repeat == inner.repeat and s.labels_per_class is None)
        used = np.concatenate([inner.train, inner.test])
        assert np.isin(used, outer.train).all()  # inside the repeat's training part
        assert not np.isin(used, outer.test).any()  # its test part never read
        assert not np.isin(inner.train, inner.test).any()
        assert set(labels[inner.test]) == set(labels[outer.train])  # every class validated
    # the same encoders see the same validation subsets: a function of its arguments only
    again = evaluation.validation_subsets(labels, subsets, test_share=0.5, seed=0)
    assert all((a.train == b.train).all() and (a.test == b.test).all()
               for a, b in zip(chosen, again, strict=True))


def test_bootstrap_differences_resample_items_and_hold_the_observed_difference():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 50)
    subsets = evaluation.few_label_subsets(labels, labels_per_class=(5,), repeats=6,
                                           test_share=0.5)
    good = np.eye(4)[labels] * 3 + rng.normal(size=(len(labels), 4))
    features = {"good": good, "noise": rng.normal(size=(len(labels), 4)), "same": good.copy()}
    frozen = evaluation.evaluate_frozen(features, labels, subsets, evaluations=("knn",),
                                        knn_k=(5,))
    table = evaluation.bootstrap_differences(frozen, "good", "noise", n_boot=500)
    row = table.iloc[0]
    t_test = evaluation.paired_differences(frozen.records, "good", "noise").iloc[0]
    assert row["difference_mean"] == pytest.approx(t_test["difference_mean"])
    assert row["bootstrap_ci_low"] < row["difference_mean"] < row["bootstrap_ci_high"]
    assert row["bootstrap_ci_low"] > 0.3  # a clear gain stays clear
    same = evaluation.bootstrap_differences(frozen, "good", "same", n_boot=200).iloc[0]
    assert same["difference_mean"] == same["bootstrap_ci_low"] == same["bootstrap_ci_high"] == 0


def test_batchnorm_is_reestimated_on_the_pool_and_the_weights_kept():
    encoder = nn.Sequential(nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3), nn.Flatten())
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    encoder.eval()
    pool = torch.randn(40, 4, 6, 6) * 5 + 2
    loader = DataLoader(_Images(pool.numpy(), np.zeros(40, dtype=int)), batch_size=8)  # equal
    evaluation.recalibrate_batchnorm({"e": encoder}, loader, torch.device("cpu"))
    assert not encoder.training  # left in the mode it was in
    with torch.no_grad():
        activations = encoder[0](pool)
    bn = encoder[1]
    torch.testing.assert_close(bn.running_mean, activations.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, activations.var(dim=(0, 2, 3)), rtol=0.05, atol=0)
    for key, value in weights.items():
        torch.testing.assert_close(encoder.state_dict()[key], value)


def test_features_at_another_size_read_resized_images_and_imagestats_the_originals():
    images, labels = _toy_images(10)
    # a constant image stays constant when resized; its pixel count tells the size
    ones = torch.ones(2, 4, 6, 6)
    assert evaluation.resize_images(ones, None) is ones
    assert evaluation.resize_images(ones, 6) is ones
    torch.testing.assert_close(evaluation.resize_images(ones, 12), torch.ones(2, 4, 12, 12))
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4 * 12 * 12, 3))
    loader = DataLoader(_Images(images, labels), batch_size=4)
    features, _ = evaluation.extract_features({"e": encoder}, loader, torch.device("cpu"),
                                              imagestats=True, image_size=12)
    with torch.no_grad():
        expected = encoder(evaluation.resize_images(images, 12)).numpy()
    np.testing.assert_allclose(features["e"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[evaluation.IMAGESTATS],
                               evaluation.imagestats_features(images.numpy()))
    batchnorm = nn.Sequential(nn.BatchNorm2d(4))
    equal = DataLoader(_Images(images, labels), batch_size=5)  # update_bn averages batch means
    evaluation.recalibrate_batchnorm({"bn": batchnorm}, equal, torch.device("cpu"),
                                     image_size=12)
    resized = evaluation.resize_images(images, 12)
    torch.testing.assert_close(batchnorm[0].running_mean, resized.mean(dim=(0, 2, 3)))
