"""The label-efficiency study: items, frozen features, fine-tuning repeats, the real-s2 profile."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rapid_utils import label_efficiency, notebook_batch, paths, study, train
from rapid_utils.corpus import chips
from rapid_utils.corpus.synthetic_chips import generate_example_chips

REAL_S2 = paths.notebooks_dir().parent.parent / "shared" / "real-s2"


@pytest.fixture(scope="module")
def chips_study(tmp_path_factory: pytest.TempPathFactory):
    """3 classes x 8 labelled 32 px chips as a chips study."""
    root = tmp_path_factory.mktemp("suite")
    folder = generate_example_chips(root / "chips", per_class=8, n_unlabelled=0, classes=3,
                                    size=32, seed=2, progress=False)
    spec = chips.ChipsSpec(root=folder, bands=(2, 3, 4, 8)).save(root / "chips.yaml")
    return study.load_study(spec, root / "runs", stats_sites=24)


def test_suite_items_leave_out_rare_classes_and_cap_stably() -> None:
    labelled = pd.DataFrame({"sample_id": [f"s{k}" for k in range(41)],
                             "label": [0] * 20 + [1] * 20 + [2]})
    kept = label_efficiency.suite_items(labelled, None)
    assert len(kept) == 40 and 2 not in set(kept["label"])  # one item cannot train and test
    capped = label_efficiency.suite_items(labelled, 10)
    assert capped.groupby("label").size().to_dict() == {0: 5, 1: 5}  # per class, in proportion
    fewer = label_efficiency.suite_items(labelled.drop(index=[0, 1]), 10)
    assert len(set(fewer["sample_id"]) ^ set(capped["sample_id"])) <= 4  # a stable draw


def test_suite_pairs_subsets_and_resumes_its_fine_tuning(chips_study, tmp_path: Path) -> None:
    config = label_efficiency.SuiteConfig(
        encoders=("random-init",), labels_per_class=(1, None), repeats=3, finetune_repeats=1,
        finetune_encoders=("random-init",), seed=0)
    base = train.FinetuneConfig(arch="resnet18", epochs=1, batch_size=8, eval_dates="first")
    inits = label_efficiency.encoder_inits(["random-init"], tmp_path)
    result = label_efficiency.run_suite(chips_study, config, "resnet18", tmp_path, base,
                                        inits, progress=False)
    records, summary = result.records, result.summary
    frozen = summary[summary["evaluation"] != "finetune"]
    # (imagestats, random-init) x (kNN k = 5, 1-NN, probe) x (1, all), and the joined
    # features' probe
    assert len(frozen) == 2 * 3 * 2 + 2
    joined = label_efficiency.COMBINED + "random-init"
    assert set(frozen.loc[frozen["encoder"] == joined, "evaluation"]) == {"linear-probe"}
    assert np.isfinite(frozen[["accuracy_ci_low", "accuracy_ci_high"]]).all().all()
    assert (frozen["accuracy_ci_low"] <= frozen["accuracy_mean"]).all()
    tuned = summary[summary["evaluation"] == "finetune"]
    assert tuned["labels_per_class"].tolist() == [1, "all"] and (tuned["n_repeats"] == 1).all()
    # paired: every encoder and evaluation saw the same subset sizes in each repeat
    sizes = records.groupby(["labels_per_class", "repeat"])[["n_train", "n_test"]].nunique()
    assert (sizes == 1).all().all()
    assert set(records.loc[records["labels_per_class"] == 1, "n_train"]) == {3}

    folder = paths.label_efficiency_dir(tmp_path)
    subsets = json.loads((folder / "subsets.json").read_text())
    assert all(not set(s["train"]) & set(s["test"]) for s in subsets)
    one = next(s for s in subsets if s["repeat"] == 0 and s["labels_per_class"] == 1)
    assert set(one["train"]) <= set(next(s for s in subsets if s["repeat"] == 0
                                         and s["labels_per_class"] is None)["train"])

    # paired: random-init alone and joined against imagestats, with both intervals
    paired = pd.read_csv(folder / "paired.csv")
    assert set(zip(paired["encoder"], paired["baseline"], strict=True)) == {
        ("random-init", label_efficiency.IMAGESTATS), (joined, label_efficiency.IMAGESTATS)}
    frozen_pairs = paired[paired["evaluation"] != "finetune"]  # both alone and joined
    assert set(frozen_pairs["encoder"]) == {"random-init", joined}
    assert frozen_pairs["bootstrap_ci_low"].notna().all()
    assert (frozen_pairs["bootstrap_ci_low"] <= frozen_pairs["difference_mean"] + 1e-12).all()

    run_file = folder / "random-init_k1_repeat0.json"
    # the test part stands in as validation: classified after the last epoch only
    assert json.loads(run_file.read_text())["parameters"]["val_every_epoch"] is False
    written = run_file.stat().st_mtime_ns
    again = label_efficiency.run_suite(chips_study, config, "resnet18", tmp_path, base,
                                       inits, progress=False)
    assert run_file.stat().st_mtime_ns == written  # a complete run is reused
    pd.testing.assert_frame_equal(again.records, records)  # and random-init features are seeded
    label_efficiency.run_suite(chips_study, config, "resnet18", tmp_path,
                               dataclasses.replace(base, lr=5e-4), inits, progress=False)
    assert json.loads(run_file.read_text())["parameters"]["lr"] == 5e-4  # a stale one is rerun


def test_another_network_seed_keeps_the_subsets_and_redraws_the_network(
        chips_study, tmp_path: Path) -> None:
    config = label_efficiency.SuiteConfig(
        encoders=("random-init",), labels_per_class=(1,), repeats=2, finetune_repeats=0,
        seed=0, bn_images=0)
    inits = label_efficiency.encoder_inits(["random-init"], tmp_path)
    base = train.FinetuneConfig(arch="resnet18")
    folder = paths.label_efficiency_dir(tmp_path)
    found = {}
    for network_seed in (None, 1):
        found[network_seed] = label_efficiency.run_suite(
            chips_study, dataclasses.replace(config, network_seed=network_seed), "resnet18",
            tmp_path, base, inits, progress=False).records
        found[network_seed, "subsets"] = (folder / "subsets.json").read_text()
    assert found[None, "subsets"] == found[1, "subsets"]  # the same label subsets, paired
    imagestats = [found[key][found[key]["encoder"] == label_efficiency.IMAGESTATS]
                  for key in (None, 1)]
    pd.testing.assert_frame_equal(*imagestats)
    networks = [found[key].loc[found[key]["encoder"] == "random-init", "accuracy"]
                for key in (None, 1)]
    assert not np.array_equal(*networks)  # another random network


def test_the_validation_protocol_reads_no_test_item(chips_study, tmp_path: Path) -> None:
    config = label_efficiency.SuiteConfig(
        encoders=("random-init",), labels_per_class=(1,), repeats=2, finetune_repeats=0,
        test_share=0.25, seed=0, bn_images=0)
    inits = label_efficiency.encoder_inits(["random-init"], tmp_path)
    base = train.FinetuneConfig(arch="resnet18")
    label_efficiency.run_suite(chips_study, config, "resnet18", tmp_path, base, inits,
                               progress=False)
    label_efficiency.run_suite(chips_study, dataclasses.replace(config, protocol="validation"),
                               "resnet18", tmp_path, base, inits, progress=False)
    folder = paths.label_efficiency_dir(tmp_path)
    tested = json.loads((folder / "subsets.json").read_text())
    validated = json.loads((folder / "validation" / "subsets.json").read_text())
    for outer, inner in zip(tested, validated, strict=True):
        used = set(inner["train"]) | set(inner["test"])
        assert used and not used & set(outer["test"])


def test_suite_config_takes_every_suite_parameter() -> None:
    values = {"seed": 3, "suite_encoders": ["byol"], "suite_labels_per_class": [1, "all"],
              "suite_knn_k": [7], "suite_bn_images": 0, "suite_protocol": "validation",
              "suite_repeats": 10, "other": 1}
    config = label_efficiency.suite_config(values)
    assert config.network_seed is None  # no byol_seed: the random network follows `seed`
    assert config.random_init_seed == 3
    assert label_efficiency.suite_config(values | {"byol_seed": 2}).random_init_seed == 2
    assert label_efficiency.suite_config(values | {"suite_eval_size": 128}).eval_size == 128
    assert (config.seed, config.encoders, config.labels_per_class, config.knn_k,
            config.bn_images, config.protocol) == (3, ("byol",), (1, None), (7,), 0,
                                                    "validation")
    with pytest.raises(ValueError, match="protocol"):
        label_efficiency.suite_config({"seed": 0, "suite_protocol": "peek"})


def test_frozen_features_are_seeded_and_leave_the_global_rng_as_it_was(chips_study) -> None:
    items = label_efficiency.suite_items(chips_study.index, None)
    before = torch.random.get_rng_state()
    first = label_efficiency.frozen_features(chips_study, items, {"random-init": "random"},
                                             "resnet18", seed=0, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # the study's RNG untouched
    assert list(first) == [label_efficiency.IMAGESTATS, "random-init"]
    torch.manual_seed(123)  # another global state: the seeded network must not follow it
    again = label_efficiency.frozen_features(chips_study, items, {"random-init": "random"},
                                             "resnet18", seed=0, progress=False)
    for name, features in first.items():
        np.testing.assert_array_equal(again[name], features)


def test_suite_config_refuses_unknown_encoders() -> None:
    with pytest.raises(ValueError, match="unknown encoders"):
        label_efficiency.SuiteConfig(encoders=("moco",))
    with pytest.raises(ValueError, match="finetune_repeats"):
        label_efficiency.SuiteConfig(repeats=2, finetune_repeats=3)
    with pytest.raises(ValueError, match="eval_size"):
        label_efficiency.SuiteConfig(eval_size=4)


def test_frozen_features_at_another_size_change_the_networks_alone(chips_study) -> None:
    items = label_efficiency.suite_items(chips_study.index, None)
    found = {size: label_efficiency.frozen_features(
        chips_study, items, {"random-init": "random"}, "resnet18", seed=0, progress=False,
        bn_images=8, eval_size=size) for size in (None, 32, 96)}
    np.testing.assert_array_equal(found[None]["random-init"], found[32]["random-init"])
    assert not np.allclose(found[None]["random-init"], found[96]["random-init"])
    for size in (32, 96):  # imagestats reads the chips as they are
        np.testing.assert_array_equal(found[size][label_efficiency.IMAGESTATS],
                                      found[None][label_efficiency.IMAGESTATS])


@pytest.mark.slow
@pytest.mark.skipif(not REAL_S2.is_dir(), reason=f"no real Sentinel-2 chips at {REAL_S2} "
                    "(the shared folder beside the project)")
def test_tiny_real_s2_profile_runs_on_the_real_chips(tmp_path: Path, monkeypatch) -> None:
    """The real-s2 profile end to end on real chips, cut to seconds: one unlabelled folder, one
    BYOL epoch of 16 px views, two repeats, one fine-tuned."""
    monkeypatch.setenv("RAPID_HOME", str(tmp_path))
    override = tmp_path / "tiny.yaml"
    override.write_text(
        f"corpus: {REAL_S2 / 'eurosat-ms-labelled'}\n"
        "chips_unlabelled: [{path: ../unlabelled-l1c-scene, bands: [B02, B03, B04, B08]}]\n"
        "chips_size: 32\nimage_size: 16\npretrain_epochs: 1\nhidden_dim: 64\n"
        "projection_dim: 32\nstats_sites: 32\nhist_sites: 4\nsuite_repeats: 2\n"
        "suite_finetune_repeats: 1\nsuite_labels_per_class: [1, all]\nfinetune_epochs: 1\n"
        "min_samples_per_epoch: 0\nsuite_bn_images: 64\n")  # the profile's 224 px kept
    outcomes = notebook_batch.reproduce("real-s2", (override,))
    assert [(run.name, run.status) for run in outcomes] == [
        ("01b_chips_overview", "done"), ("03_byol_pretraining", "done"),
        ("06_label_efficiency", "done")]
    stats = json.loads((paths.runs_dir("real-s2") / paths.BAND_STATS_FILE).read_text())
    assert set(stats["per_source"]) == {"unlabelled-l1c-scene"}  # normalised per folder
    data = study.load_study(paths.chips_spec_path("real-s2"), paths.runs_dir("real-s2"),
                            stats_sites=32)
    pool = set(data.pretraining_sites()["sample_id"])
    assert pool and not pool & set(data.index["sample_id"])  # no labelled chip pretrains
    table = pd.read_csv(paths.figures_dir("real-s2") / "label_efficiency.csv")
    assert set(table["encoder"]) == {"byol", "random-init", "imagestats", "imagestats+byol",
                                     "imagestats+random-init"}
    assert set(table["evaluation"]) == {"knn", "linear-probe", "finetune"}
    frozen = table[table["evaluation"] != "finetune"]
    assert np.isfinite(frozen["accuracy_ci_low"]).all() and (frozen["accuracy_mean"] > 0).all()
    assert (paths.figures_dir("real-s2") / "label_efficiency.png").stat().st_size > 5_000
