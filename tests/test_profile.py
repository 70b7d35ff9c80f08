"""Profiles: one typed `Profile`, checked key by key, and the notebooks' defaults are `quick`."""

from __future__ import annotations

import ast
import dataclasses
import logging

import nbformat
import papermill
import pytest
import yaml

from rapid_utils import cli, docs, notebook_batch, paths, study, train
from rapid_utils.profile import Profile, ProfileError, load_profile

PROFILES = ["ci", "quick", "poster", "chips-example", "real-s2"]

# Notebook parameters that no profile sets: paths (relative to notebooks/, for a run by hand),
# the scenario of a notebook 04 job, and settings of one notebook alone.
PATH_PARAMETERS = {"corpus_dir", "runs_dir", "figures_dir", "store", "real_s2_dir"}
JOB_PARAMETERS = {"init", "label_fraction", "seed", "force", "linear_probe", "byol_checkpoint"}
NOTEBOOK_PARAMETERS = {"byol_checkpoint", "grid_year", "multilabel_threshold", "realism_sites",
                       "realism_l2a_chips", "realism_real_splits", "realism_render_seeds"}


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads(name):
    settings = load_profile(name)
    assert isinstance(settings.label_fractions, tuple)
    assert settings.to_dict()["label_fractions"] == list(settings.label_fractions)
    assert settings.is_chips == (name in ("chips-example", "real-s2"))


def test_an_unknown_key_names_the_file_and_the_nearest_key(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("lars_trst: 0.02\n")
    with pytest.raises(ProfileError, match="typo.yaml: unknown key 'lars_trst'; did you mean "
                                           "'lars_trust'"):
        load_profile("ci", (typo,))


@pytest.mark.parametrize(("line", "message"), [
    ("pretrain_epochs: ten", "pretrain_epochs: 'ten' is not an integer"),
    ("pretrain_epochs: true", "pretrain_epochs: True is not an integer"),
    ("pretrain_epochs: 0", "pretrain_epochs: 0: must be at least 1"),
    ("label_fractions: [0.5, 2]", r"label_fractions: \[0.5, 2\]: must be above 0 and at most 1"),
    ("positives: temporall", "positives: 'temporall' is not 'augment' or 'temporal'"),
    ("suite_labels_per_class: [1, every]",
     r"suite_labels_per_class: \[1, 'every'\] is not a list, each an integer or 'all'"),
    ("lr: '0.1'", "lr: '0.1' is not a number"),
])
def test_a_bad_value_names_key_file_and_value(tmp_path, line, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(line + "\n")
    with pytest.raises(ProfileError, match=f"bad.yaml: {message}"):
        load_profile("ci", (bad,))


def test_a_profile_without_seed_is_refused(tmp_path, monkeypatch):
    (tmp_path / "mine.yaml").write_text("corpus: synthetic\n")
    monkeypatch.setattr(paths, "params_dir", lambda: tmp_path)
    with pytest.raises(ProfileError, match="profile 'mine' lacks seed"):
        load_profile("mine")


def test_settings_without_a_key_are_the_defaults():
    settings = load_profile("real-s2")  # no `seeds`, `store`, `synth_*`
    assert settings.finetune_seeds == (settings.seed,)
    assert settings.store == "" and settings.synth_sites == Profile.synth_sites


def _notebook_defaults(notebook: str) -> dict:
    declared = papermill.inspect_notebook(str(paths.notebooks_dir() / f"{notebook}.ipynb"))
    return {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}


NOTEBOOKS = sorted(p.stem for p in paths.notebooks_dir().glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_notebook_run_by_hand_is_the_quick_study(notebook, tmp_path):
    """Each parameter is the quick profile's value as the batch passes it, or else one that no
    profile sets (a path, a fine-tuning job's scenario, a notebook's own setting)."""
    quick = notebook_batch.for_notebook(
        notebook, notebook_batch.study_parameters("quick", load_profile("quick"), tmp_path))
    defaults = _notebook_defaults(notebook)
    own = PATH_PARAMETERS | NOTEBOOK_PARAMETERS | (
        JOB_PARAMETERS if notebook == "04_finetuning" else set())
    assert set(defaults) - own <= set(quick)  # every other parameter comes from the profile
    assert {k: v for k, v in defaults.items() if k not in own} == {
        k: quick[k] for k in defaults if k not in own}


@pytest.mark.parametrize(("notebook", "config"), [
    ("03_byol_pretraining", train.PretrainConfig), ("04_finetuning", train.FinetuneConfig)])
def test_training_notebooks_build_their_config_from_their_parameters_alone(notebook, config):
    """Notebooks 03 and 04 pass `globals()` to `study.pretrain_config`/`finetune_config`: no
    name bound outside the parameters cell may be a config field."""
    cells = nbformat.read(paths.notebooks_dir() / f"{notebook}.ipynb", as_version=4).cells
    bound = set()
    for cell in cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    bound.add(node.id)
                elif isinstance(node, ast.alias):
                    bound.add(node.asname or node.name.split(".")[0])
    assert bound & {f.name for f in dataclasses.fields(config)} == set()


def test_new_settings_reach_the_training_configs(tmp_path):
    settings = dataclasses.replace(
        load_profile("ci"), pretrain_weight_decay=0.01, pretrain_optimizer="sgd",
        warmup_epochs=0, knn_k=5, finetune_weight_decay=0.02, finetune_optimizer="sgd")
    jobs = notebook_batch.plan_jobs("ci", settings, tmp_path)
    pretraining = next(job for job in jobs if job.notebook == "03_byol_pretraining")
    finetuning = next(job for job in jobs if job.scenario)
    pre = study.pretrain_config(notebook_batch.notebook_values(pretraining.notebook,
                                                      pretraining.parameters))
    fine = study.finetune_config(notebook_batch.notebook_values(finetuning.notebook,
                                                       finetuning.parameters), tmp_path)
    assert (pre.weight_decay, pre.optimizer, pre.warmup_epochs, pre.knn_k) == (0.01, "sgd", 0, 5)
    assert (fine.weight_decay, fine.optimizer) == (0.02, "sgd")


def test_view_options_reach_the_pretraining_config(tmp_path):
    """`jitter_bands`, `blur` and `view_noise`: profile -> batch -> notebook 03 -> config."""
    quick = load_profile("quick")
    assert (quick.jitter_bands, quick.blur, quick.view_noise) == ("per-band", True, 0.0)
    settings = dataclasses.replace(quick, jitter_bands="shared", blur=False, view_noise=0.05)
    jobs = notebook_batch.plan_jobs("quick", settings, tmp_path)
    pretraining = next(job for job in jobs if job.notebook == "03_byol_pretraining")
    pre = study.pretrain_config(notebook_batch.notebook_values(pretraining.notebook,
                                                      pretraining.parameters))
    assert (pre.jitter_bands, pre.blur, pre.view_noise) == ("shared", False, 0.05)
    for line, message in [
        ("jitter_bands: per-pixel", "jitter_bands: 'per-pixel' is not 'per-band' or 'shared'"),
        ("blur: 'no'", "blur: 'no' is not true or false"),
        ("view_noise: -0.1", "view_noise: -0.1: must be at least 0"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(line + "\n")
        with pytest.raises(ProfileError, match=f"bad.yaml: {message}"):
            load_profile("ci", (bad,))


def test_the_stem_reaches_pretraining_and_fine_tuning_but_not_imagenets(tmp_path):
    """`stem`: profile -> batch -> notebooks 03 and 04 -> configs; the ImageNet init keeps
    ImageNet's stem, the only one its weights fit."""
    assert load_profile("quick").stem == "imagenet"
    settings = dataclasses.replace(load_profile("ci"), stem="small")
    jobs = notebook_batch.plan_jobs("ci", settings, tmp_path)
    pretraining = next(job for job in jobs if job.notebook == "03_byol_pretraining")
    assert study.pretrain_config(notebook_batch.notebook_values(pretraining.notebook,
                                                       pretraining.parameters)).stem == "small"
    stems = {job.scenario: study.finetune_config(
        notebook_batch.notebook_values(job.notebook, job.parameters), tmp_path).stem
        for job in jobs if job.scenario}
    assert stems == {key: "imagenet" if key.startswith("imagenet") else "small"
                     for key in settings.scenarios}
    bad = tmp_path / "bad.yaml"
    bad.write_text("stem: tiny\n")
    with pytest.raises(ProfileError, match="bad.yaml: stem: 'tiny' is not 'imagenet' or "
                                           "'small' or 'small-stride2'"):
        load_profile("ci", (bad,))


def test_cli_profile_show_prints_the_resolved_profile(tmp_path, capsys):
    extra = tmp_path / "more.yaml"
    extra.write_text("lr: 0.01\n")
    assert cli.main(["profile", "show", "quick", "--extra", str(extra)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_profile("quick", (extra,)).to_dict()
    assert shown["lr"] == 0.01 and shown["knn_k"] == Profile.knn_k  # a default, shown


def test_cli_shows_a_traceback_for_unexpected_value_errors_only(monkeypatch, caplog):
    def broken(profile: str) -> None:
        raise ValueError("a bug deep down")

    monkeypatch.setattr(docs, "build_docs", broken)
    with caplog.at_level(logging.ERROR):
        assert cli.main(["docs", "--profile", "ci"]) == 2
        assert cli.main(["profile", "show", "no-such-profile"]) == 2
    unexpected, expected = caplog.records
    assert "a bug deep down" in unexpected.getMessage() and unexpected.exc_info
    assert "no parameter file" in expected.getMessage() and not expected.exc_info

