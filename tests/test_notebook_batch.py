"""The papermill batch and the rapid-utils command, end to end on the tiny `ci` profile."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch

from rapid_utils import (
    cli,
    docs,
    notebook_batch,
    paths,
    progress,
    provenance,
    realism,
    results,
    study,
)
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.store import PackedStore
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.progress import gist


@pytest.fixture
def project_home(tmp_path, monkeypatch):
    """Send every generated output (corpus, runs, figures) to a temporary folder."""
    monkeypatch.setenv("RAPID_HOME", str(tmp_path))
    return tmp_path


def test_load_profile_merges_extra_files_in_order(tmp_path):
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text("seed: 5\nsynth_sites: 7\n")
    second.write_text("seed: 9\n")
    settings = notebook_batch.load_profile("ci", (first, second))
    assert settings.seed == 9
    assert settings.synth_sites == 7
    assert settings.corpus == "synthetic"


def test_load_profile_errors_name_the_file(tmp_path):
    with pytest.raises(notebook_batch.ProfileError, match="nope.yaml.*known profiles: .*ci"):
        notebook_batch.load_profile("nope")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1, 2\n")
    with pytest.raises(notebook_batch.ProfileError, match="broken.yaml is not valid YAML"):
        notebook_batch.load_profile("ci", (broken,))
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(notebook_batch.ProfileError, match="flat mapping"):
        notebook_batch.load_profile("ci", (listed,))


@pytest.mark.slow
def test_reproduce_ci_profile_runs_the_study_and_resumes(project_home, tmp_path, caplog):
    outcomes = notebook_batch.reproduce("ci")
    by_name = {run.name: run for run in outcomes}
    # 01-03, 04 per scenario, 05, 06, 07
    assert len(outcomes) == 3 + len(results.ALL_SCENARIOS) + 3
    assert [run.status for run in outcomes if run.status == "failed"] == []
    times = pd.read_csv(paths.runs_dir("ci") / notebook_batch.JOB_TIMES_FILE)
    assert times["job"].tolist() == [run.name for run in outcomes]
    assert (times.loc[times["status"] == "done", "seconds"] > 0).all()
    assert set(times["machine"]) == {provenance.machine()}
    assert times["reference_step_s"].nunique() == 1 and times["reference_step_s"].iloc[0] > 0
    imagenet = by_name["04_finetuning [imagenet-100%, seed 0]"]
    assert imagenet.status == "skipped" and "imagenet_weights_path" in imagenet.error
    for run in outcomes:
        if run.status == "done":
            executed = json.loads(run.output.read_text())
            assert any("injected-parameters" in c["metadata"].get("tags", [])
                       for c in executed["cells"])
    assert len(build_index(paths.synthetic_corpus_dir("ci"), progress=False)) == 40
    figures = paths.figures_dir("ci")
    for name in ("fig1_sample_locations", "fig2_monthly_images", "fig3_byol_model",
                 "fig4_accuracy_per_epoch", "fig5_class_precision_recall"):
        assert (figures / f"{name}.png").stat().st_size > 10_000, name
    table = pd.read_csv(figures / "results.csv")
    ran = [s.key for s in results.ALL_SCENARIOS if s.key != "imagenet-100%"]
    assert sorted(table["scenario"]) == sorted(ran)
    assert np.isfinite(table["test_accuracy_mean"]).all()
    skipped = results.skipped_scenarios(paths.results_dir(paths.runs_dir("ci")))
    assert list(skipped) == ["imagenet-100%"]
    efficiency = pd.read_csv(figures / "label_efficiency.csv")
    assert set(efficiency["evaluation"]) == {"knn", "linear-probe", "finetune"}
    assert set(efficiency["encoder"]) == {"byol", "random-init", "imagestats",
                                          "imagestats+byol", "imagestats+random-init"}
    paired = pd.read_csv(figures / "label_efficiency_paired.csv")
    assert {"bootstrap_ci_low", "bootstrap_ci_high"} <= set(paired.columns)
    # notebook 07 measures the generator against the real chips, or says why it cannot
    assert by_name["07_realism"].status == "done"
    assert (figures / realism.CSV_NAME).is_file() == realism.real_s2_dir().is_dir()

    index = docs.build_docs("ci")
    page = index.read_text()
    assert "05_figures.html" in page and "fig4_accuracy_per_epoch.png" in page
    assert "byol-1%" in page  # the results table
    assert (index.parent / "03_byol_pretraining.html").stat().st_size > 10_000

    # An interrupted or repeated batch reuses every complete fine-tuning result.
    again = notebook_batch.reproduce("ci")
    statuses = {run.name: run.status for run in again if run.name.startswith("04_")}
    assert set(statuses.values()) == {"reused", "skipped"}
    for run in results.load_results(paths.results_dir(paths.runs_dir("ci"))):
        assert run.parameters["eval_dates"] == "seasons"  # the profile's, not January alone
        assert len(run.per_date_accuracy["test"]) == 4

    # A result is reused only for the very run: checked job by job, without running anything.
    values = notebook_batch.load_profile("ci")
    corpus = notebook_batch.resolve_corpus("ci", values)
    check = notebook_batch._ReuseCheck()

    def reasons(jobs: list[notebook_batch.Job]) -> dict[str, str | None]:
        verdicts = {job.scenario: check.why_rerun(job) for job in jobs
                    if job.scenario and job.scenario != "imagenet-100%"}
        return {key: rerun and rerun.reason for key, rerun in verdicts.items()}

    assert set(reasons(notebook_batch.plan_jobs("ci", values, corpus)).values()) == {None}
    changed = reasons(notebook_batch.plan_jobs("ci", dataclasses.replace(values, lr=0.002), corpus))
    assert all("stale result: parameters changed: lr" in why for why in changed.values())
    checkpoint = next(paths.runs_dir("ci").glob("byol/*/checkpoint.pt"))
    torch.save(torch.load(checkpoint, weights_only=True) | {"note": "retrained"}, checkpoint)
    retrained = reasons(notebook_batch.plan_jobs("ci", values, corpus))
    assert {key for key, why in retrained.items() if why} == {
        key for key in retrained if key.startswith("byol")}
    assert "another BYOL checkpoint" in retrained["byol-1%"]
    # ... and the batch reruns a stale one, saying why (one scenario keeps the test short)
    one = tmp_path / "one.yaml"
    one.write_text("scenarios: [byol-1%]\n")
    with caplog.at_level(logging.INFO, logger="rapid_utils.notebook_batch"):
        rerun = notebook_batch.reproduce("ci", (one,))
    assert [run.status for run in rerun if run.name.startswith("04_")] == ["done"]
    assert "rerunning, stale result: another BYOL checkpoint" in caplog.text
    # one progress line an epoch from inside the notebook, e.g. "... fine-tune epoch 1/2: ..."
    assert "04_finetuning [byol-1%, seed 0]: fine-tune epoch 1/" in caplog.text
    assert check.why_rerun(notebook_batch.plan_jobs("ci", values, corpus)[6]) is None  # byol-1%


def test_a_missing_corpus_stops_the_batch_before_any_notebook(project_home, tmp_path, caplog):
    override = tmp_path / "missing_corpus.yaml"
    override.write_text(f"corpus: {tmp_path / 'no-such-corpus'}\n")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["reproduce", "--profile", "ci", "--extra", str(override)]) == 2
    assert "cannot be used, so no notebook was run: no corpus folder at" in caplog.text
    assert not (paths.runs_dir("ci") / "notebooks").exists()


@pytest.mark.slow
def test_failed_notebook_is_kept_and_reported(project_home, tmp_path):
    override = tmp_path / "too_big_a_batch.yaml"
    override.write_text("pretrain_batch_size: 100000\nscenarios: [byol-1%]\n")
    assert cli.main(["reproduce", "--profile", "ci", "--extra", str(override)]) == 1
    executed = paths.runs_dir("ci") / "notebooks" / "03_byol_pretraining.ipynb"
    assert executed.is_file()
    assert "exceeds the" in executed.read_text()
    # BYOL fine-tuning cannot run without its pretraining: skipped, with the reason recorded
    skipped = results.skipped_scenarios(paths.results_dir(paths.runs_dir("ci")))
    assert skipped["byol-1%"].startswith("BYOL pretraining failed")
    # notebook 05 then has nothing to draw, and says so in words
    figures = json.loads((paths.runs_dir("ci") / "notebooks" / "05_figures.ipynb").read_text())
    errors = [o for c in figures["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors[0]["ename"] == "NoResultsError"
    assert "BYOL pretraining failed" in errors[0]["evalue"]


def test_unknown_scenario_is_a_profile_error(tmp_path):
    override = tmp_path / "typo.yaml"
    override.write_text("scenarios: [byol-50%]\n")
    with pytest.raises(notebook_batch.ProfileError,
                       match="typo.yaml: scenarios.*unknown.*byol-50%"):
        notebook_batch.load_profile("ci", (override,))


def test_a_profile_store_reaches_training_notebooks_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    values = dataclasses.replace(notebook_batch.load_profile("ci"), store="data/ci.zarr")
    jobs = notebook_batch.plan_jobs("ci", values, tmp_path)
    training = [job for job in jobs if job.notebook in ("03_byol_pretraining", "04_finetuning")]
    assert training and all(job.parameters["store"] == str(tmp_path / "data" / "ci.zarr")
                            for job in training)
    for notebook in ("03_byol_pretraining", "04_finetuning"):
        declared = papermill.inspect_notebook(str(paths.notebooks_dir() / f"{notebook}.ipynb"))
        assert declared["store"]["default"] == '""'  # the GeoTIFFs unless a store is given
    planned = notebook_batch.plan_jobs("ci", notebook_batch.load_profile("ci"), tmp_path)
    assert planned[-2].parameters["store"] == ""
    assert paths.data_location("s3://bucket/rapid.zarr") == "s3://bucket/rapid.zarr"


def test_the_embedded_corpus_is_packed_once_and_anew_when_regenerated(tmp_path, caplog):
    dates = ["2018-01-03", "2018-07-02", "2018-10-05"]
    corpus = generate_corpus(tmp_path / "c", n_sites=4, seed=0, size=16, dates=dates,
                             workers=1, progress=False)
    location = tmp_path / "data" / "c.zarr"
    notebook_batch.pack_synthetic_store(corpus, location, workers=1)
    packed = PackedStore(location)
    assert [d.isoformat() for d in packed.dates] == dates  # every date of the corpus
    sample = packed.sample_ids[0]
    first = packed.read(sample, [0]).copy()
    with caplog.at_level(logging.INFO):
        notebook_batch.pack_synthetic_store(corpus, location, workers=1)  # kept: nothing to pack
    assert "anew" not in caplog.text
    generate_corpus(tmp_path / "c", n_sites=4, seed=1, size=16, dates=dates, workers=1,
                    progress=False)  # same site ids, other pixels
    with caplog.at_level(logging.INFO):
        notebook_batch.pack_synthetic_store(corpus, location, workers=1)
    assert "packing it anew" in caplog.text
    again = PackedStore(location)
    assert sorted(again.sample_ids) == sorted(build_index(corpus, progress=False)["sample_id"])
    assert not (sample in again.sample_ids
                and np.array_equal(again.read(sample, [0]), first))  # the new pixels


def test_cli_synth_writes_a_corpus_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "corpus"
    code = cli.main(["synth", "--out", str(out), "--n-sites", "3", "--size", "16",
                     "--dates", "2018-01-03,2018-07-02", "--workers", "1"])
    assert code == 0
    assert sorted(p.name for p in out.glob("imagery/*/*/*/PF-SR/*.tif"))[:2] == [
        "2018-01-03.tif", "2018-01-03.tif"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli.main(["synth", "--out", str(foreign), "--n-sites", "2"]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"


def test_cli_pretrain_then_finetune_share_split_and_statistics(tmp_path):
    corpus = tmp_path / "c"
    assert cli.main(["synth", "--out", str(corpus), "--n-sites", "40", "--size", "16",
                     "--dates", "2018-01-03,2018-07-02", "--workers", "1"]) == 0
    runs = tmp_path / "runs"
    common = ["--corpus", str(corpus), "--runs", str(runs), "--arch", "resnet18",
              "--epochs", "1", "--batch-size", "8", "--no-pin-memory"]
    assert cli.main(["pretrain", *common, "--image-size", "16", "--hidden-dim", "32",
                     "--projection-dim", "16"]) == 0
    checkpoint = paths.byol_run_dir(runs, "augment", 0) / paths.CHECKPOINT_FILE
    assert checkpoint.is_file()
    stats_written = (runs / paths.BAND_STATS_FILE).stat().st_mtime_ns
    assert cli.main(["finetune", *common, "--init", "byol", "--label-fraction", "0.5"]) == 0
    assert (runs / paths.BAND_STATS_FILE).stat().st_mtime_ns == stats_written  # reused
    results = json.loads(
        (paths.results_dir(runs) / "finetune_init-byol_frac-0.5_seed-0.json").read_text()
    )
    assert results["complete"]
    assert results["parameters"]["init"] == f"byol:{checkpoint.resolve()}"
    assert results["parameters"]["n_labelled"] < results["parameters"]["n_train"]


def test_training_from_a_profile_refuses_settings_of_its_own(project_home, caplog):
    """A setting given beside --profile would make a file the batch reruns as stale."""
    with caplog.at_level(logging.ERROR):
        assert cli.main(["finetune", "--profile", "ci", "--batch-size", "4", "--lr", "0.1"]) == 2
        assert cli.main(["pretrain", "--profile", "ci", "--seed", "1"]) == 2
        assert cli.main(["finetune", "--corpus", "c", "--runs", "r", "--scenario", "byol-1%"]) == 2
        assert cli.main(["pretrain", "--corpus", "c"]) == 2
    assert "--batch-size, --lr cannot be combined with --profile" in caplog.text
    assert "--seed cannot be combined with --profile" in caplog.text
    assert "--extra and --scenario choose within a profile: give --profile too" in caplog.text
    assert "give --profile, or --corpus and --runs (--runs missing)" in caplog.text
    assert not (project_home / "data").exists()  # refused before the corpus was made


def test_a_byol_seed_is_another_pretraining_run_on_the_same_split(tmp_path):
    values = notebook_batch.load_profile("ci")
    assert values.pretraining_seed == values.seed  # no byol_seed: the profile's seed
    jobs = notebook_batch.plan_jobs("ci", dataclasses.replace(values, byol_seed=7), tmp_path)
    by_name = {job.notebook: job.parameters for job in jobs}
    assert by_name["03_byol_pretraining"]["seed"] == 7  # 03's own name for its seed
    assert by_name["06_label_efficiency"]["byol_seed"] == 7
    assert by_name["06_label_efficiency"]["seed"] == values.seed  # the subsets stay
    assert {job.parameters["split_seed"] for job in jobs} == {values.seed}
    tuned = [job.parameters for job in jobs if job.notebook == "04_finetuning"]
    assert tuned and {parameters["byol_seed"] for parameters in tuned} == {7}


def test_resolve_init(tmp_path):
    assert study.resolve_init("random", tmp_path) == "random"
    assert study.resolve_init("byol:/x/ckpt.pt", tmp_path) == "byol:/x/ckpt.pt"
    expected = paths.byol_run_dir(tmp_path, "temporal", 3) / paths.CHECKPOINT_FILE
    assert study.resolve_init("byol", tmp_path, "temporal", 3) == f"byol:{expected.resolve()}"
    with pytest.raises(ValueError, match="init must be"):
        study.resolve_init("imagenet21k", tmp_path)


def test_docs_without_a_run_say_what_to_do(project_home):
    with pytest.raises(FileNotFoundError, match="rapid-utils reproduce --profile ci"):
        docs.build_docs("ci")


# Profile settings the batch uses itself (the corpus, the jobs), not a notebook.
BATCH_KEYS = {"corpus", "synth_sites", "synth_size", "synth_dates", "synth_dtype", "workers",
              "seeds", "scenarios", *(f.name for f in dataclasses.fields(notebook_batch.Profile)
                                      if f.name.startswith(("chips_", "example_chips_")))}


def test_every_profile_setting_reaches_a_notebook_or_the_batch():
    declared = set()
    for notebook in paths.notebooks_dir().glob("*.ipynb"):
        declared |= set(papermill.inspect_notebook(str(notebook)))
    renamed = {key for aliases in notebook_batch.ALIASES.values() for key in aliases}
    settings = {f.name for f in dataclasses.fields(notebook_batch.Profile)}
    assert settings - declared - renamed - BATCH_KEYS == set()  # none is read by nobody


@pytest.mark.parametrize("profile", ["ci", "quick", "poster", "chips-example", "real-s2"])
def test_every_profile_plans_its_jobs(profile, tmp_path):
    settings = notebook_batch.load_profile(profile)
    corpus = tmp_path
    if settings.is_chips:  # the batch's corpus is then the chips spec it writes
        corpus = tmp_path / "chips.yaml"
        corpus.write_text("")
    jobs = notebook_batch.plan_jobs(profile, settings, corpus)
    first = ["01b_chips_overview"] if settings.is_chips else ["01_data_exploration",
                                                              "02_label_mapping"]
    assert [job.notebook for job in jobs[:len(first)]] == first
    figures = ["05_figures"] if settings.scenarios else []  # real-s2 runs no poster scenario
    realism = [] if settings.is_chips else ["07_realism"]  # the embedded corpus's generator
    last = [*figures, "06_label_efficiency", *realism]
    assert [job.notebook for job in jobs[-len(last):]] == last
    n_seeds = len(settings.finetune_seeds)
    assert sum(job.scenario is not None for job in jobs) == len(settings.scenarios) * n_seeds



def test_notebook_kernels_run_on_unix_sockets_without_the_tcp_warning(
        tmp_path, monkeypatch, capfd) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import json, os\nprint(json.dumps(sorted(os.listdir('.'))))")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, tmp_path / "tiny.ipynb")
    monkeypatch.setattr(paths, "notebooks_dir", lambda: tmp_path)
    started = []
    make_kernel = notebook_batch.NotebookKernel
    monkeypatch.setattr(notebook_batch, "NotebookKernel", lambda **kw: started.append(
        make_kernel(**kw)) or started[-1])
    outcome = notebook_batch.run_notebook("tiny", tmp_path / "out" / "tiny.ipynb", {})
    assert outcome.error is None
    assert started[0].transport == "ipc" and not started[0].is_alive()  # stopped, not leaked
    assert started[0].clients and not any(client.channels_running  # else each logs, collected,
                                          for client in started[0].clients)  # "Could not destroy"
    executed = nbformat.read(outcome.output, as_version=4)
    assert "tiny.ipynb" in executed.cells[0].outputs[0]["text"]  # ran in the notebooks folder
    assert "without encryption" not in capfd.readouterr().err


def test_progress_line_gist_is_the_first_whole_sentence() -> None:
    reason = ("Could not get ResNet18_Weights.IMAGENET1K_V1 (<urlopen error offline>). To supply "
              "them, on a machine with internet run once `...`.\nsecond line")
    assert gist(reason) == (
        "Could not get ResNet18_Weights.IMAGENET1K_V1 (<urlopen error offline>)")
    assert gist("Traceback (most recent call last):\n  File ...") == (
        "Traceback (most recent call last):")
    assert gist("  ") == "no reason given"


def test_a_study_from_an_indexed_corpus_does_not_index_it_again(tiny_corpus, tmp_path,
                                                                  monkeypatch):
    indexed = study.index_corpus(tiny_corpus)
    assert indexed.n_sites == 24 and indexed.location == tiny_corpus.resolve()

    def index_again(*args, **kwargs):
        raise AssertionError("the corpus was indexed again")

    monkeypatch.setattr(study, "build_index", index_again)
    data = study.load_study(tiny_corpus, tmp_path / "runs", stats_sites=8, indexed=indexed)
    assert data.index.equals(indexed.index) and data.split_sizes().sum() == 24


def test_progress_lines_from_a_child_process_reach_the_batch(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV, raising=False)
    shown = []
    child = ("from rapid_utils.progress import report_progress\n"
             "for k in (1, 2):\n    report_progress(f'epoch {k}/2:  loss\\n0.5')")
    with progress.follow_progress(shown.append, interval_s=0.05):
        subprocess.run([sys.executable, "-c", child], check=True)
    assert shown == ["epoch 1/2: loss 0.5", "epoch 2/2: loss 0.5"]  # one line each
    assert progress.PROGRESS_FILE_ENV not in os.environ  # restored
    progress.report_progress("nobody listens")  # without the variable: nothing, no error
