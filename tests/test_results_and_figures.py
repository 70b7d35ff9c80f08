"""Results files -> tables, claims and poster figures 3-5, and notebook 05 on fake results."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from rapid_utils import labels, paths, plots, results
from rapid_utils.io import write_json_atomic

# Final test accuracy per scenario and seed; the curves rise linearly to it over EPOCHS.
ACCURACY = {
    "scratch-100%": {0: 0.50, 1: 0.54, 2: 0.52},
    "byol-100%": {0: 0.60, 1: 0.66, 2: 0.66},
    "byol-10%": {0: 0.58, 1: 0.60},
    "byol-1%": {0: 0.55, 1: 0.57, 2: 0.59},
    "scratch-1%": {0: 0.40, 1: 0.44, 2: 0.42},
}
EPOCHS = 4
INITS = {"random": "random", "byol": "byol:/runs/byol/byol_augment_seed0/checkpoint.pt",
         "imagenet": "imagenet"}


def unversioned_results(scenario: str, seed: int, accuracy: float, epochs: int = EPOCHS,
                        linear_probe: bool = False) -> dict:
    """A results file's content in the form before `results.SCHEMA_VERSION` (no per-date
    accuracy, classes or provenance), with a known final test accuracy.

    Per-class precision is `accuracy` for every class and recall `accuracy - 0.1`; macro-F1
    is `accuracy - 0.05`.
    """
    spec = results.SCENARIO_BY_KEY[scenario]
    n_classes = len(labels.CLASSES)
    final = {
        "accuracy": accuracy,
        "macro_f1": accuracy - 0.05,
        "precision": {c: accuracy for c in labels.CLASSES},
        "recall": {c: accuracy - 0.1 for c in labels.CLASSES},
        "confusion_matrix": np.eye(n_classes, dtype=int).tolist(),
        "n": 100,
    }
    curve = [float(accuracy * (e + 1) / epochs) for e in range(epochs)]
    return {
        "parameters": {
            "arch": "resnet18", "init": INITS[spec.init], "imagenet_weights_path": None,
            "label_fraction": spec.label_fraction, "epochs": epochs, "batch_size": 64,
            "lr": 1e-3, "weight_decay": 1e-4, "optimizer": "adamw", "seed": seed,
            "linear_probe": linear_probe, "num_workers": 0, "pin_memory": True,
            "prefetch_factor": 2, "augment": True, "n_train": 1000, "n_labelled": 10,
            "n_val": 100, "n_test": 100, "world_size": 1,
        },
        "seed": seed,
        "device": "cpu",
        "per_epoch": {"train_loss": [2.0 / (e + 1) for e in range(epochs)],
                      "val_accuracy": [a - 0.01 for a in curve], "test_accuracy": curve,
                      "lr": [1e-3] * epochs},
        "final": {"test": final, "val": final},
        "versions": {"torch": "x", "torchvision": "x", "numpy": "x", "rapid_utils": "x"},
        "git_commit": None,
        "complete": True,
    }


def fake_results(scenario: str, seed: int, accuracy: float, epochs: int = EPOCHS,
                 linear_probe: bool = False) -> results.RunResult:
    """A run as `train.finetune` writes it, with the numbers of `unversioned_results`."""
    old = unversioned_results(scenario, seed, accuracy, epochs, linear_probe)
    return results.RunResult.from_json(old | {
        "schema_version": results.SCHEMA_VERSION, "per_date_accuracy": {"test": {}, "val": {}},
        "provenance": {}, "normalisation": None, "model": None, "unreadable_samples": {},
        "classes": list(labels.CLASSES), "machine": None,
        "parameters": old["parameters"] | {"eval_dates": "seasons", "test_every_epoch": False},
    })


def write_fake_results(directory: Path, accuracy: dict = ACCURACY) -> Path:
    """Results files named as `train.results_name` does, plus skipped.json for ImageNet."""
    directory.mkdir(parents=True, exist_ok=True)
    for scenario, by_seed in accuracy.items():
        spec = results.SCENARIO_BY_KEY[scenario]
        for seed, value in by_seed.items():
            name = f"finetune_init-{spec.init}_frac-{spec.label_fraction:g}_seed-{seed}.json"
            results.write_run(directory / name, fake_results(scenario, seed, value))
    results.write_skipped(directory, {"imagenet-100%": "ImageNet weights unavailable offline"})
    return directory


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    return write_fake_results(paths.results_dir(tmp_path / "runs"))


@pytest.fixture
def loaded(results_dir: Path) -> list[results.RunResult]:
    return results.load_results(results_dir)


def test_scenarios_are_the_poster_five_in_order() -> None:
    assert [s.key for s in results.SCENARIOS] == [
        "scratch-100%", "byol-100%", "byol-10%", "byol-1%", "imagenet-100%"]
    assert set(plots.SCENARIO_COLORS) == {s.key for s in results.ALL_SCENARIOS}
    assert len(set(plots.SCENARIO_COLORS.values())) == len(plots.SCENARIO_COLORS)


@pytest.mark.parametrize("scenario", [s.key for s in results.ALL_SCENARIOS])
def test_scenario_of_round_trips(scenario: str) -> None:
    assert results.scenario_of(fake_results(scenario, 0, 0.5)) == scenario


def test_scenario_of_rejects_probes_and_other_fractions() -> None:
    assert results.scenario_of(fake_results("byol-1%", 0, 0.5, linear_probe=True)) is None
    other = fake_results("byol-1%", 0, 0.5)
    other.parameters["label_fraction"] = 0.5
    assert results.scenario_of(other) is None
    plain = fake_results("byol-10%", 0, 0.5)
    plain.parameters["init"] = "byol"
    assert results.scenario_of(plain) == "byol-10%"


def test_load_results_skips_incomplete_and_corrupt(results_dir: Path, caplog) -> None:
    write_json_atomic(results_dir / "finetune_init-byol_frac-1_seed-9.json",
                      fake_results("byol-100%", 9, 0.9).to_json() | {"complete": False})
    (results_dir / "finetune_init-random_frac-1_seed-8.json").write_text('{"parameters": {')
    with caplog.at_level(logging.WARNING, logger="rapid_utils.results"):
        loaded = results.load_results(results_dir)
    assert len(loaded) == sum(len(v) for v in ACCURACY.values())
    assert "seed-9.json" in caplog.text and "seed-8.json" in caplog.text
    assert "skipped.json" not in caplog.text
    assert results.load_results(results_dir / "absent") == []


def test_per_epoch_table(loaded: list[results.RunResult]) -> None:
    table = results.per_epoch_table(loaded)
    assert list(table.columns) == ["scenario", "seed", "epoch", "test_accuracy", "val_accuracy",
                                   "train_loss"]
    assert len(table) == EPOCHS * sum(len(v) for v in ACCURACY.values())
    assert list(table["scenario"].unique()) == [
        "scratch-100%", "byol-100%", "byol-10%", "byol-1%", "scratch-1%"]
    last = table[(table["scenario"] == "byol-1%") & (table["epoch"] == EPOCHS)]
    assert last["test_accuracy"].tolist() == pytest.approx([0.55, 0.57, 0.59])


def test_summary_means_and_stds(loaded: list[results.RunResult]) -> None:
    summary = results.summary_table(loaded)
    assert list(summary.index) == ["scratch-100%", "byol-100%", "byol-10%", "byol-1%",
                                   "scratch-1%"]
    row = summary.loc["byol-100%"]
    assert row["n_seeds"] == 3
    assert row["test_accuracy_mean"] == pytest.approx(0.64)
    # deviations -0.04, 0.02, 0.02: variance 0.0024 / 2
    assert row["test_accuracy_std"] == pytest.approx(math.sqrt(0.0012))
    assert row["macro_f1_mean"] == pytest.approx(0.59)
    assert row["precision_forest"] == pytest.approx(0.64)
    assert row["recall_water"] == pytest.approx(0.54)
    assert summary.loc["byol-10%", "test_accuracy_std"] == pytest.approx(0.01 * math.sqrt(2))
    single = results.summary_table([fake_results("byol-1%", 0, 0.5)])
    assert math.isnan(single.loc["byol-1%", "test_accuracy_std"])


def test_claims_arithmetic(loaded: list[results.RunResult]) -> None:
    summary = results.summary_table(loaded)
    claims = results.poster_claims(summary)
    assert list(claims.index) == ["byol-100% - scratch-100%", "byol-1% - scratch-100%",
                                  "byol-1% - scratch-1%"]
    first = claims.loc["byol-100% - scratch-100%"]
    assert first["difference_mean"] == pytest.approx(12.0)  # 64 - 52
    assert first["spread"] == pytest.approx(np.std([10, 12, 14], ddof=1))  # paired
    assert "paired" in first["spread_method"]
    assert first["poster_points"] == 12.0
    assert claims.loc["byol-1% - scratch-1%", "difference_mean"] == pytest.approx(15.0)
    # unpaired (seeds 0, 1 vs 0, 1, 2): combined std
    unpaired = results.poster_claims(results.summary_table(
        [fake_results("byol-100%", s, a) for s, a in ACCURACY["byol-10%"].items()]
        + [fake_results("scratch-100%", s, a) for s, a in ACCURACY["scratch-100%"].items()]))
    row = unpaired.loc["byol-100% - scratch-100%"]
    assert row["difference_mean"] == pytest.approx(7.0)
    assert row["spread"] == pytest.approx(100 * math.hypot(0.01 * math.sqrt(2), 0.02))
    assert "unpaired" in row["spread_method"]
    missing = results.poster_claims(summary.drop(index="byol-1%"), {"byol-1%": "no checkpoint"})
    assert math.isnan(missing.loc["byol-1% - scratch-100%", "difference_mean"])
    assert "no checkpoint" in missing.loc["byol-1% - scratch-100%", "note"]
    assert "+12.0" in results.claims_text(claims)


def test_write_summary(loaded: list[results.RunResult], tmp_path: Path) -> None:
    summary = results.summary_table(loaded)
    csv_path, md_path = results.write_summary(summary, tmp_path / "figures",
                                              results.poster_claims(summary))
    table = pd.read_csv(csv_path, index_col="scenario")
    assert table.loc["byol-1%", "test_accuracy_mean"] == pytest.approx(0.57)
    assert json.loads(table.loc["byol-1%", "test_accuracy_by_seed"]) == {
        "0": 0.55, "1": 0.57, "2": 0.59}
    text = md_path.read_text()
    assert "| BYOL 1% (`byol-1%`) | 3 | 57.0 ± 2.0 |" in text
    assert "byol-100% - scratch-100% | +12.0 |" in text
    assert not list((tmp_path / "figures").glob("*.tmp"))


def test_skipped_scenarios(results_dir: Path, tmp_path: Path) -> None:
    assert results.skipped_scenarios(results_dir) == {
        "imagenet-100%": "ImageNet weights unavailable offline"}
    assert results.skipped_scenarios(tmp_path) == {}
    (tmp_path / results.SKIPPED_FILE).write_text("not json")
    assert results.skipped_scenarios(tmp_path) == {}
    with pytest.raises(ValueError, match="unknown scenario"):
        results.write_skipped(tmp_path, {"imagenet": "x"})


def test_plot_byol_diagram() -> None:
    fig = plots.plot_byol_diagram()
    assert isinstance(fig, Figure)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for word in (r"predictor $q_\theta$", "EMA", "stop-gradient", r"2 - 2\cos"):
        assert word in texts


def test_plot_accuracy_curves(loaded: list[results.RunResult]) -> None:
    table = results.per_epoch_table(loaded)
    fig = plots.plot_accuracy_curves(table, {"imagenet-100%": "offline"})
    ax = fig.axes[0]
    assert len(ax.lines) == 5  # one mean line per scenario present
    assert ax.get_ylabel() == "test accuracy (%)"  # runs tested after every epoch
    # the legend holds what is drawn: the lines, then the min-max band; no skipped scenario
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [line.get_label() for line in ax.lines] + ["min to max over seeds"]
    assert "BYOL 100% (n = 3 seeds)" in legend
    assert len(ax.collections) == 5  # the bands
    # the skip reason goes below the axes, not into the title
    assert "skipped" not in ax.get_title() and "ImageNet" not in ax.get_title()
    assert "Not drawn: ImageNet 100% (skipped: offline)." in fig.get_supxlabel()


def test_accuracy_curves_of_a_single_seed_have_no_band_in_the_legend() -> None:
    table = results.per_epoch_table([fake_results("byol-100%", 0, 0.6)])
    ax = plots.plot_accuracy_curves(table).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["BYOL 100% (n = 1 seed)"] and not ax.collections
    assert ax.figure.get_supxlabel() == ""  # nothing to note


def test_plot_class_scores(loaded: list[results.RunResult]) -> None:
    from matplotlib.container import ErrorbarContainer

    summary = results.summary_table(loaded)
    fig = plots.plot_class_scores(summary, {"imagenet-100%": "offline"}, runs=loaded)
    # a row of panels for all labels, one for 1 % of labels (BYOL 1 % and its scratch baseline)
    precision_ax, recall_ax, precision_1, recall_1 = fig.axes
    assert "all labels" in precision_ax.get_title() and "1 % of labels" in precision_1.get_title()
    for ax in fig.axes:
        assert len(ax.patches) == 2 * len(labels.CLASSES)
    heights = sorted({round(p.get_height(), 6) for p in precision_ax.patches})
    assert heights == pytest.approx([52.0, 64.0])
    assert sorted({round(p.get_height(), 6) for p in precision_1.patches}) == pytest.approx(
        [42.0, 57.0])
    # whiskers from the lowest to the highest seed: BYOL 100 % precision 60, 66, 66
    whiskers = [c for c in precision_ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(whiskers) == 2
    (segments,) = whiskers[0].lines[2]
    spans = np.array([s[:, 1] for s in segments.get_segments()])
    np.testing.assert_allclose(spans, [[60.0, 66.0]] * len(labels.CLASSES))
    # test sites per class (the confusion matrices' row sums) in the tick labels
    ticks = [t.get_text() for t in precision_ax.get_xticklabels()]
    assert ticks == [f"{c}\n(n = 1)" for c in labels.CLASSES]
    # a missing scenario is named with its reason below the axes, not drawn, not in the legend
    assert "Not drawn: ImageNet 100% (skipped: offline)." in fig.get_supxlabel()
    assert "ImageNet" not in fig.get_suptitle()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["BYOL 100% (n = 3 seeds)", "Scratch 100% (n = 3 seeds)",
                      "BYOL 1% (n = 3 seeds)", "Scratch 1% (n = 3 seeds)",
                      "lowest to highest seed"]


def test_plot_class_scores_without_runs_says_what_it_lacks(
    loaded: list[results.RunResult],
) -> None:
    from matplotlib.container import ErrorbarContainer

    fig = plots.plot_class_scores(results.summary_table(loaded), scenarios=["byol-100%"])
    (precision_ax, _) = fig.axes
    assert not [c for c in precision_ax.containers if isinstance(c, ErrorbarContainer)]
    assert [t.get_text() for t in precision_ax.get_xticklabels()] == list(labels.CLASSES)
    assert "no spread over seeds" in fig.get_supxlabel()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["BYOL 100% (n = 3 seeds)"]


def test_notebook_05_on_fake_results(results_dir: Path, tmp_path: Path, run_notebooks) -> None:
    figures = tmp_path / "figures"
    run_notebooks({"05_figures": {"runs_dir": str(results_dir.parent)}},  # reads only results
                  tmp_path / "no-corpus", tmp_path)
    for name in ("fig3_byol_model", "fig4_accuracy_per_epoch", "fig5_class_precision_recall"):
        assert (figures / f"{name}.png").is_file(), name
        assert (figures / f"{name}.pdf").is_file(), name
    table = pd.read_csv(figures / "results.csv", index_col="scenario")
    assert len(table) == 5 and np.isfinite(table["test_accuracy_mean"]).all()
    assert (figures / "results.md").is_file()
    executed = nbformat.read(tmp_path / "05_figures.ipynb", as_version=4)
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "ImageNet weights unavailable offline" in outputs


def test_no_results_are_reported_in_words(tmp_path):
    with pytest.raises(results.NoResultsError, match=r"No complete fine-tuning results in .*"
                       r"Skipped by the batch:\n- byol-1%: BYOL pretraining failed"):
        results.require_results([], tmp_path, {"byol-1%": "BYOL pretraining failed"})
    results.require_results([fake_results("byol-1%", 0, 0.5)], tmp_path, {})  # no error


def test_accuracy_curves_of_runs_tested_after_the_last_epoch_only(
    loaded: list[results.RunResult],
) -> None:
    last_only = [dataclasses.replace(run, per_epoch=run.per_epoch | {"test_accuracy": [
        None] * (len(run.per_epoch["test_accuracy"]) - 1) + run.per_epoch[
        "test_accuracy"][-1:]}) for run in loaded]
    table = results.per_epoch_table(last_only)
    assert table["test_accuracy"].isna().sum() == len(table) - len(last_only)
    ax = plots.plot_accuracy_curves(table).axes[0]
    assert ax.get_ylabel() == "validation accuracy (%)"
    assert ax.get_title().startswith("Validation accuracy per epoch")
    assert "the lines are validation accuracy" in ax.figure.get_supxlabel()
    assert len(ax.lines) == 5 and len(ax.collections) == 5 + 5  # bands and final diamonds
    final = table.dropna(subset=["test_accuracy"])
    byol = [final["epoch"].max(), 100 * final.loc[final["scenario"] == "byol-100%",
                                                   "test_accuracy"].mean()]
    diamonds = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 1]
    assert any(np.allclose(points, [byol]) for points in diamonds)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "test accuracy after the last epoch" in legend


def test_a_results_file_round_trips_with_its_schema_version(tmp_path: Path) -> None:
    run = fake_results("byol-1%", 2, 0.5)
    results.write_run(tmp_path / "r.json", run)
    assert json.loads((tmp_path / "r.json").read_text())["schema_version"] == 1
    assert results.read_run(tmp_path / "r.json") == run


def test_unversioned_results_files_are_still_read(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "old.json", unversioned_results("byol-1%", 2, 0.5))
    run = results.read_run(tmp_path / "old.json")
    assert run.parameters["eval_dates"] == "first" and run.parameters["test_every_epoch"]
    assert run.per_date_accuracy == {} and run.provenance is None and run.model is None
    assert run.unreadable_samples == {}
    assert run.classes == list(labels.CLASSES) and run.seed == 2
    assert results.scenario_of(run) == "byol-1%"
    assert "no per-date accuracy" in plots.plot_per_date_accuracy(run).axes[0].texts[0].get_text()


def test_other_schema_versions_and_partial_files_are_refused_by_name(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "new.json", fake_results("byol-1%", 0, 0.5).to_json()
                      | {"schema_version": 99})
    with pytest.raises(results.ResultsFileError, match=r"new\.json has results schema version 99"):
        results.read_run(tmp_path / "new.json")
    partial = fake_results("byol-1%", 0, 0.5).to_json()
    del partial["per_date_accuracy"]
    write_json_atomic(tmp_path / "partial.json", partial)
    with pytest.raises(results.ResultsFileError, match=r"partial\.json lacks per_date_accuracy"):
        results.read_run(tmp_path / "partial.json")
