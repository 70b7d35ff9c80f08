"""Metrics, BYOL pretraining (checkpoint, resume) and fine-tuning on a tiny CPU corpus."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rapid_utils import (
    augment,
    datasets,
    distributed,
    io,
    metrics,
    models,
    provenance,
    results,
    splits,
    train,
)
from rapid_utils.bandstats import BandStats
from rapid_utils.corpus import layout
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.reader import CorpusError
from rapid_utils.corpus.synthetic import generate_corpus
from rapid_utils.labels import CLASSES
from rapid_utils.train import finetuning, pretraining, runtime

DATES = ["2018-01-03", "2018-04-03", "2018-07-02", "2018-10-05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 30-site, 16 px, 4-date corpus with its splits and band statistics."""
    root = generate_corpus(
        tmp_path_factory.mktemp("train") / "c", n_sites=30, seed=1, size=16, dates=DATES,
        workers=1, progress=False,
    )
    index = build_index(root, progress=False)
    split = splits.assign_splits(index, seed=0)
    train_index = index[split == "train"]
    return {
        "corpus_root": root,
        "train_index": train_index,
        "val_index": index[split == "val"],
        "band_stats": datasets.compute_band_stats(root, train_index, progress=False),
    }


def tiny_pretrain(**changes) -> train.PretrainConfig:
    base = dict(
        arch="resnet18", epochs=1, batch_size=8, base_lr=0.5, warmup_epochs=0, image_size=16,
        hidden_dim=32, projection_dim=16, knn_k=3,
    )
    return train.PretrainConfig(**(base | changes))


def tiny_finetune(**changes) -> train.FinetuneConfig:
    base = dict(arch="resnet18", epochs=2, batch_size=8, lr=1e-3)
    return train.FinetuneConfig(**(base | changes))


def run_pretrain(data: dict, config: train.PretrainConfig, out_dir: Path) -> list[dict]:
    return train.pretrain(
        config, data["corpus_root"], data["train_index"], data["val_index"],
        data["band_stats"], out_dir, progress=False,
    )


def run_finetune(data: dict, config: train.FinetuneConfig, path: Path, **kwargs) -> dict:
    return train.finetune(
        config, data["corpus_root"], data["train_index"], data["val_index"], data["val_index"],
        data["band_stats"], path, progress=False, **kwargs,
    )


# --------------------------------------------------------------------------- metrics


def test_classification_metrics_by_hand() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    result = metrics.classification_metrics(y_true, y_pred)
    assert result["accuracy"] == pytest.approx(4 / 6)
    # precision: class 0 1/2, class 1 2/3, class 2 1/1; recall: 1/2, 1, 1/2
    assert result["precision"]["artificial"] == pytest.approx(0.5)
    assert result["precision"]["agricultural"] == pytest.approx(2 / 3)
    assert result["precision"]["forest"] == pytest.approx(1.0)
    assert result["recall"]["artificial"] == pytest.approx(0.5)
    assert result["recall"]["agricultural"] == pytest.approx(1.0)
    assert result["recall"]["forest"] == pytest.approx(0.5)
    f1 = [0.5, 0.8, 2 / 3] + [0.0] * 4  # absent classes count as 0 in the 7-class macro mean
    assert result["macro_f1"] == pytest.approx(sum(f1) / 7)
    assert set(result["precision"]) == set(CLASSES) == set(result["recall"])
    assert result["precision"]["water"] == 0.0
    assert result["confusion_matrix"][0][:3] == [1, 1, 0]
    assert result["confusion_matrix"][2][:3] == [1, 0, 1]
    assert np.array(result["confusion_matrix"]).shape == (7, 7)


def test_projection_std_healthy_and_collapsed() -> None:
    d = 64
    z = torch.randn(4096, d, generator=torch.Generator().manual_seed(0))
    assert metrics.projection_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert metrics.projection_std(torch.ones(100, d)) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- pretraining


def test_pretrain_checkpoint_loads_with_build_model(data: dict, tmp_path: Path) -> None:
    history = run_pretrain(data, tiny_pretrain(), tmp_path)
    assert len(history) == 1
    entry = history[0]
    assert set(entry) == {
        "epoch", "loss", "projection_std", "knn_accuracy", "encoder_change", "lr", "tau"
    }
    assert all(math.isfinite(v) for v in entry.values())
    path = tmp_path / train.CHECKPOINT_FILE
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["history"] == history
    model = models.build_model("resnet18", 4, num_classes=7, init=f"byol:{path}")
    for name, value in checkpoint[models.BYOL_ENCODER_KEY].items():
        assert torch.equal(model.state_dict()[name], value), name


def test_encoder_change_grows_with_lars_trust_and_warns_when_tiny(
    data: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rapid_utils.train"):
        frozen = run_pretrain(data, tiny_pretrain(lars_trust=1e-7), tmp_path / "frozen")
    assert frozen[0]["encoder_change"] < 1e-4
    assert "moved only" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rapid_utils.train"):
        moving = run_pretrain(data, tiny_pretrain(lars_trust=1.0, base_lr=8.0), tmp_path / "moving")
    assert moving[0]["encoder_change"] > metrics.MIN_ENCODER_CHANGE
    assert "moved only" not in caplog.text


def test_resume_matches_uninterrupted_run(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_pretrain(epochs=2)
    straight = run_pretrain(data, config, tmp_path / "straight")

    save = pretraining._save_checkpoint

    def save_then_die(path: Path, checkpoint: dict) -> None:
        save(path, checkpoint)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    monkeypatch.setattr(pretraining, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(data, config, tmp_path / "resumed")
    monkeypatch.setattr(pretraining, "_save_checkpoint", save)
    resumed = run_pretrain(data, config, tmp_path / "resumed")

    assert resumed == straight
    # a finished run trains no more
    monkeypatch.setattr(pretraining, "_save_checkpoint", save_then_die)
    assert run_pretrain(data, config, tmp_path / "resumed") == straight
    a, b = (
        torch.load(tmp_path / run / train.CHECKPOINT_FILE, weights_only=True)["byol"]
        for run in ("straight", "resumed")
    )
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_resume_refuses_other_config(data: dict, tmp_path: Path) -> None:
    run_pretrain(data, tiny_pretrain(), tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint\.pt.*base_lr"):
        run_pretrain(data, tiny_pretrain(base_lr=0.1), tmp_path)


def test_temporal_positives_run(data: dict, tmp_path: Path) -> None:
    history = run_pretrain(data, tiny_pretrain(positives="temporal", optimizer="sgd",
                                               colour_jitter=0.0), tmp_path)
    assert math.isfinite(history[0]["loss"])
    with pytest.raises(ValueError, match="colour_jitter must be in"):
        tiny_pretrain(colour_jitter=-0.1)


def test_pretraining_runs_with_the_spectrum_preserving_views(data: dict, tmp_path: Path) -> None:
    config = tiny_pretrain(jitter_bands="shared", blur=False, view_noise=0.05, optimizer="sgd")
    history = run_pretrain(data, config, tmp_path)
    assert math.isfinite(history[0]["loss"])
    checkpoint = torch.load(tmp_path / train.CHECKPOINT_FILE, weights_only=True)
    assert {k: checkpoint["config"][k] for k in ("jitter_bands", "blur", "view_noise")} == {
        "jitter_bands": "shared", "blur": False, "view_noise": 0.05}


def test_pair_sampling_gives_two_dates(data: dict) -> None:
    dataset = datasets.PlanetFusionDataset(
        data["corpus_root"], data["train_index"], data["band_stats"], date_sampling="pair"
    )
    item = dataset[0]
    assert item["date"] != item["date2"]
    assert item["image2"].shape == item["image"].shape


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_results_file(data: dict, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results = run_finetune(data, tiny_finetune(), path)
    assert json.loads(path.read_text()) == results
    assert results["complete"] is True
    assert {"parameters", "per_epoch", "final", "seed", "versions", "git_commit"} <= set(results)
    assert set(results["versions"]) == {"torch", "torchvision", "numpy", "safetensors",
                                          "rapid_utils"}
    assert results["machine"] == provenance.machine()
    assert results["parameters"]["n_labelled"] == len(data["train_index"])
    curves = results["per_epoch"]
    for key in ("train_loss", "val_accuracy", "lr"):
        assert len(curves[key]) == 2 and all(math.isfinite(v) for v in curves[key])
    # test sites are classified after the last epoch only, by default
    assert curves["test_accuracy"][0] is None
    assert curves["test_accuracy"][1] == results["final"]["test"]["accuracy"]
    every = run_finetune(data, tiny_finetune(test_every_epoch=True), tmp_path / "every.json")
    assert all(math.isfinite(v) for v in every["per_epoch"]["test_accuracy"])
    assert every["final"] == results["final"]  # training does not depend on it
    once = run_finetune(data, tiny_finetune(val_every_epoch=False), tmp_path / "once.json")
    assert once["per_epoch"]["val_accuracy"] == [None, curves["val_accuracy"][1]]
    assert once["final"] == results["final"]  # the last epoch's validation is kept
    test = results["final"]["test"]
    assert set(test["precision"]) == set(CLASSES) == set(test["recall"])
    assert np.sum(test["confusion_matrix"]) == len(data["val_index"])

    again = run_finetune(data, tiny_finetune(), tmp_path / "again.json")
    assert again["per_epoch"] == results["per_epoch"] and again["final"] == results["final"]


def test_fine_tuned_model_is_saved_with_its_normalisation_and_reloads(
    data: dict, tmp_path: Path
) -> None:
    results = run_finetune(data, tiny_finetune(epochs=1), tmp_path / "r.json",
                           model_dir=tmp_path / "model")
    stats = data["band_stats"]
    expected = {"bands": list(layout.BANDS), "scale": layout.REFLECTANCE_SCALE,
                "mean": list(stats.mean), "std": list(stats.std), "input_size": 16,
                "gsd_m": layout.PIXEL_SIZE_M}
    assert results["normalisation"] == expected
    description = json.loads((tmp_path / "model" / models.CLASSIFIER_DESCRIPTION).read_text())
    assert {k: description[k] for k in expected} == expected
    assert description["class_names"] == list(CLASSES) and description["arch"] == "resnet18"
    assert description["split_fingerprint"] == results["provenance"]["split_fingerprint"]
    assert description["results_file"] == "r.json"
    assert results["model"]["weights_sha256"] == description["weights_sha256"]

    model, normalisation = models.load_pretrained(results["model"]["path"])
    assert normalisation.mean == stats.mean and normalisation.input_size == 16
    # the saved weights are the final ones: they repeat the results file's test predictions
    dataset = datasets.open_dataset(data["corpus_root"], data["val_index"], stats, "seasons")
    again = finetuning._evaluate(model, runtime.make_loader(dataset, 8, 0, shuffle=False),
                            torch.device("cpu"))
    confusion = metrics.classification_metrics(again["y_true"], again["y_pred"])
    assert confusion["confusion_matrix"] == results["final"]["test"]["confusion_matrix"]

    without = run_finetune(data, tiny_finetune(epochs=1), tmp_path / "plain.json")
    assert without["model"] is None and "normalisation" in without


def test_finetune_reuses_complete_result_unless_forced(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.json"
    config = tiny_finetune(epochs=1)
    first = run_finetune(data, config, path)

    def no_training(*args, **kwargs):
        raise AssertionError("trained although a complete result exists")

    monkeypatch.setattr(models, "build_model", no_training)
    assert run_finetune(data, config, path) == first
    with pytest.raises(AssertionError, match="trained although"):
        run_finetune(data, config, path, force=True)


def test_linear_probe_freezes_encoder(
    data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = []
    build = models.build_model

    def keep(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(models, "build_model", keep)
    run_finetune(data, tiny_finetune(linear_probe=True, epochs=1), tmp_path / "r.json")
    torch.manual_seed(0)  # finetune seeds with config.seed (0) right before building the model
    fresh = build("resnet18", 4, 7).state_dict()
    for name, value in built[0].state_dict().items():
        if name.startswith("fc."):
            assert not torch.equal(value, fresh[name]), name
        else:
            assert torch.equal(value, fresh[name]), name


def test_label_fraction_uses_fewer_sites(data: dict, tmp_path: Path) -> None:
    config = tiny_finetune(label_fraction=0.1, epochs=1)
    results = run_finetune(data, config, tmp_path / train.results_name(config))
    expected = len(splits.label_fraction(data["train_index"], 0.1, 0))
    assert results["parameters"]["n_labelled"] == expected < len(data["train_index"])


def test_missing_imagenet_weights_fail_before_training(data: dict, tmp_path: Path) -> None:
    config = tiny_finetune(init="imagenet", imagenet_weights_path=str(tmp_path / "none.pt"))
    with pytest.raises(models.WeightsUnavailableError):
        run_finetune(data, config, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_takes_the_for_loop_step(name: str) -> None:
    """The fused kernels follow torch's for-loop update rule, to float rounding, over steps."""
    torch.manual_seed(0)
    reference = models.build_model("resnet18", 4, 7, "random")
    fused = models.build_model("resnet18", 4, 7, "random")
    fused.load_state_dict(reference.state_dict())
    initial = {name: param.detach().clone() for name, param in reference.named_parameters()}
    config = train.FinetuneConfig(optimizer=name, lr=1e-2)
    optimizer = finetuning._build_optimizer(list(fused.parameters()), config)
    assert optimizer.defaults["fused"] is True
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.SGD
    extra = {"momentum": 0.9} if name == "sgd" else {}
    looped = kind(reference.parameters(), lr=1e-2, weight_decay=config.weight_decay,
                  foreach=False, **extra)
    for _ in range(3):
        # the same gradients for both, so rounding differences cannot grow through the model
        for a, b in zip(reference.parameters(), fused.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        looped.step()
        optimizer.step()
    moved = max((a - b).abs().max().item() for a, b in zip(
        reference.parameters(), initial.values(), strict=True))
    assert moved > 1e-3  # the steps did move the weights
    for a, b in zip(reference.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_results_name() -> None:
    config = train.FinetuneConfig(init="byol:/some/dir/checkpoint.pt", label_fraction=0.01)
    assert train.results_name(config) == "finetune_init-byol_frac-0.01_seed-0.json"
    probe = dataclasses.replace(config, init="random", linear_probe=True, seed=2)
    assert train.results_name(probe) == "finetune_init-random_frac-0.01_linear_seed-2.json"


def test_small_label_shares_repeat_whole_passes_per_epoch():
    drawn = [item for item, _ in datasets.EpochSampler(10, seed=0, num_samples=25)]
    assert len(drawn) == 25
    assert sorted(drawn[:10]) == list(range(10))  # each pass is a permutation
    assert sorted(drawn[10:20]) == list(range(10))
    assert len(list(datasets.EpochSampler(10, seed=0, num_samples=5))) == 10  # one pass at least


def test_epoch_sampler_orders_and_draw_seeds_follow_seed_and_epoch() -> None:
    sampler = datasets.EpochSampler(20, seed=3)
    first = list(sampler)
    assert list(sampler) == first  # iterating again repeats the epoch
    sampler.set_epoch(1)
    second = list(sampler)
    assert [item for item, _ in second] != [item for item, _ in first]
    assert len({seed for _, seed in first + second}) == 40  # a seed per draw
    resumed = datasets.EpochSampler(20, seed=3)
    resumed.set_epoch(1)
    assert list(resumed) == second  # a resumed run sees the same epoch
    in_order = datasets.EpochSampler(5, seed=3, shuffle=False)
    assert [item for item, _ in in_order] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("drop_last", [True, False])
def test_epoch_sampler_shards_the_epoch_among_processes(drop_last: bool) -> None:
    whole = [item for item, _ in datasets.EpochSampler(11, seed=0)]
    shards = [list(datasets.EpochSampler(11, seed=0, rank=rank, world_size=2,
                                         drop_last=drop_last)) for rank in (0, 1)]
    assert [len(shard) for shard in shards] == [len(datasets.EpochSampler(
        11, seed=0, world_size=2, drop_last=drop_last))] * 2 == [5 + (not drop_last)] * 2
    interleaved = [key[0] for pair in zip(*shards, strict=True) for key in pair]
    assert interleaved[:10] == whole[:10]  # every world_size-th key of one order
    assert set(interleaved) == set(whole) or drop_last


def test_random_dates_are_the_same_for_any_number_of_workers(data: dict) -> None:
    dataset = datasets.open_dataset(data["corpus_root"], data["train_index"],
                                    data["band_stats"], "random")

    def epoch_dates(loader: torch.utils.data.DataLoader, epoch: int) -> list:
        loader.sampler.set_epoch(epoch)
        return [(s, d) for batch in loader for s, d in zip(batch["sample_id"], batch["date"],
                                                           strict=True)]

    in_process = runtime.make_loader(dataset, 4, seed=5, shuffle=True)
    with_workers = runtime.make_loader(dataset, 4, seed=5, shuffle=True, num_workers=2)
    assert with_workers.persistent_workers  # one set of workers serves every epoch
    epochs = [epoch_dates(in_process, epoch) for epoch in (0, 1)]
    assert epochs[0] != epochs[1]
    assert [epoch_dates(with_workers, epoch) for epoch in (0, 1)] == epochs
    assert len({d for _, d in epochs[0] + epochs[1]}) > 1  # dates are drawn, not fixed


def test_a_field_missing_from_older_files_counts_as_its_default() -> None:
    older = dataclasses.asdict(tiny_pretrain())
    del older["colour_jitter"]  # written before the field existed, i.e. with its default
    assert runtime.changed_fields(tiny_pretrain(), older) == []
    assert runtime.changed_fields(tiny_pretrain(colour_jitter=0.0), older) == ["colour_jitter"]
    assert runtime.changed_fields(tiny_pretrain(num_workers=2), older) == []  # loader setting


def test_checkpoints_older_than_the_view_options_hold_their_defaults() -> None:
    """A checkpoint without `jitter_bands`, `blur` and `view_noise` was trained with today's
    views (per-band jitter, blur, no noise): it is resumed by those, refused by others."""
    older = dataclasses.asdict(tiny_pretrain())
    for name in ("jitter_bands", "blur", "view_noise"):
        del older[name]
    assert runtime.changed_fields(tiny_pretrain(), older) == []
    changed = tiny_pretrain(jitter_bands="shared", blur=False, view_noise=0.1)
    assert runtime.changed_fields(changed, older) == ["blur", "jitter_bands", "view_noise"]


@pytest.mark.parametrize(("change", "field"), [
    ({"jitter_bands": "per-pixel"}, "jitter_bands"), ({"blur": "no"}, "blur"),
    ({"view_noise": -0.1}, "view_noise"), ({"view_noise": float("inf")}, "view_noise")])
def test_bad_view_options_are_refused_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must"):
        tiny_pretrain(**change)


def test_pretraining_views_follow_the_view_options() -> None:
    """`_byol_views` passes `jitter_bands`, `blur`, `view_noise` and the band statistics the
    batch was normalised with to `augment.byol_views`."""
    stats = BandStats((500.0, 800.0, 700.0, 2500.0), (300.0, 400.0, 450.0, 900.0), 1, 1)
    batch = {"image": torch.randn(4, 4, 16, 16)}
    config = tiny_pretrain(jitter_bands="shared", blur=False, view_noise=0.1)
    views = pretraining._byol_views(batch, config, torch.Generator().manual_seed(0),
                                    torch.device("cpu"), None, stats)
    expected = augment.byol_views(batch["image"], torch.Generator().manual_seed(0), 16,
                                  jitter_bands="shared", blur=False, noise=0.1,
                                  normalisation=(stats.mean, stats.std))
    assert all(torch.equal(a, b) for a, b in zip(views, expected, strict=True))
    default = pretraining._byol_views(batch, tiny_pretrain(), torch.Generator().manual_seed(0),
                                      torch.device("cpu"), None, stats)
    today = augment.byol_views(batch["image"], torch.Generator().manual_seed(0), 16)
    assert all(torch.equal(a, b) for a, b in zip(default, today, strict=True))
    with pytest.raises(ValueError, match="normalisation"):
        pretraining._byol_views(batch, config, torch.Generator(), torch.device("cpu"), None)


# --------------------------------------------------------------------------- provenance


def test_results_record_split_statistics_and_checkpoint(data: dict, tmp_path: Path) -> None:
    pretrain_dir = tmp_path / "byol"
    run_pretrain(data, tiny_pretrain(), pretrain_dir)
    checkpoint = pretrain_dir / train.CHECKPOINT_FILE
    config = tiny_finetune(epochs=1, init=f"byol:{checkpoint}")
    results = run_finetune(data, config, tmp_path / "r.json")
    provenance = results["provenance"]
    assert provenance["band_stats_fingerprint"] == data["band_stats"].fingerprint()
    assert provenance["init_checkpoint_sha256"] == io.file_sha256(checkpoint)
    assert len(provenance["split_fingerprint"]) == 16
    assert train.stale_reasons(results, config, provenance) == []


def test_stale_reasons_name_what_changed(data: dict, tmp_path: Path) -> None:
    config = tiny_finetune(epochs=1)
    results = run_finetune(data, config, tmp_path / "r.json")
    provenance = results["provenance"]
    assert train.stale_reasons(results, dataclasses.replace(config, lr=0.01), provenance) == [
        "parameters changed: lr"]
    other_stats = dataclasses.replace(data["band_stats"], mean=(1.0, 2.0, 3.0, 4.0))
    moved = train.finetune_provenance(config, data["train_index"].iloc[1:], data["val_index"],
                                      data["val_index"], other_stats)
    reasons = train.stale_reasons(results, config, moved)
    assert any("another split" in r for r in reasons)
    assert any("other band statistics" in r for r in reasons)
    older = {key: value for key, value in results.items()
             if key not in ("provenance", "schema_version")}  # unversioned, no provenance
    assert train.stale_reasons(older, config, provenance) == [
        "written before provenance was recorded"]
    with pytest.raises(ValueError, match=r"differs \(parameters changed: lr"):
        run_finetune(data, dataclasses.replace(config, lr=0.01), tmp_path / "r.json")


def test_finetune_refuses_a_checkpoint_of_another_split(data: dict, tmp_path: Path) -> None:
    train.pretrain(tiny_pretrain(), data["corpus_root"], data["train_index"], data["val_index"],
                   data["band_stats"], tmp_path, progress=False, split_fingerprint="0123abcd")
    checkpoint = torch.load(tmp_path / train.CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["provenance"]["split_fingerprint"] == "0123abcd"
    assert checkpoint["provenance"]["mean"] == list(data["band_stats"].mean)
    config = tiny_finetune(epochs=1, init=f"byol:{tmp_path / train.CHECKPOINT_FILE}")
    with pytest.raises(ValueError, match="pretrained with another split"):
        run_finetune(data, config, tmp_path / "r.json")


def test_resume_refuses_other_sites_or_statistics(data: dict, tmp_path: Path) -> None:
    run_pretrain(data, tiny_pretrain(epochs=2), tmp_path)  # complete: a rerun would return
    fewer = dict(data, train_index=data["train_index"].iloc[1:])
    with pytest.raises(ValueError, match="pretraining_sites_fingerprint"):
        run_pretrain(fewer, tiny_pretrain(epochs=2), tmp_path)
    other_stats = dict(data, band_stats=dataclasses.replace(data["band_stats"],
                                                            std=(1.0, 1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="band_stats_fingerprint"):
        run_pretrain(other_stats, tiny_pretrain(epochs=2), tmp_path)


# --------------------------------------------------------------------------- evaluation dates


def test_seasonal_dates_pick_one_date_per_season() -> None:
    monthly = [dt.date(2018, month, 3) for month in range(1, 13)]
    monthly += [dt.date(2019, month, 3) for month in range(1, 13)]
    assert datasets.seasonal_dates(monthly) == [dt.date(2018, m, 3) for m in (1, 4, 7, 10)]
    ragged = [dt.date(2018, month, 3) for month in (2, 3, 5, 6, 8, 9, 11, 12)]
    assert datasets.seasonal_dates(ragged) == [ragged[i] for i in (0, 2, 4, 6)]
    assert datasets.seasonal_dates(monthly[:2]) == monthly[:2]


def test_spread_dates_are_fixed_per_site_and_draw_no_random_numbers(data: dict) -> None:
    dataset = datasets.PlanetFusionDataset(
        data["corpus_root"], data["train_index"], data["band_stats"], date_sampling="spread")
    state = torch.get_rng_state()
    dates = [dataset[i]["date"] for i in range(len(dataset))]
    assert torch.equal(torch.get_rng_state(), state)
    assert dates == [dataset[i]["date"] for i in range(len(dataset))]
    assert len(set(dates)) > 1  # not every site at its first (January) date


def test_evaluation_votes_over_dates_and_reports_each_date() -> None:
    # logits are the first 3 channels of a 1 x 1 image: per site, 3 dates
    logits = torch.tensor([
        [[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]],  # site 0: vote 0 (one sure date)
        [[0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 3.0, 0.0]],  # site 1: vote 1
    ])
    images = torch.zeros(2, 3, 4, 1, 1)
    images[:, :, :3, 0, 0] = logits
    batch = {"image": images, "label": torch.tensor([0, 2]),
             "date": [["d1", "d1"], ["d2", "d2"], ["d3", "d3"]]}  # collated: per date position

    class Loader(list):
        dataset = None

    model = torch.nn.Flatten()  # (N, 4, 1, 1) -> (N, 4): channel 3 is 0, never the maximum
    result = finetuning._evaluate(model, Loader([batch]), torch.device("cpu"))
    assert result["y_true"] == [0, 2]
    assert result["y_pred"] == [0, 1]
    assert result["per_date"] == {"d1": 1.0, "d2": 0.0, "d3": 0.0}


def test_sharded_evaluation_puts_every_site_back_in_order(monkeypatch) -> None:
    """Under torchrun rank k classifies sites k, k + world, ...; every rank gets them all back
    in the split's order (here three shards of seven sites, gathered as torchrun would)."""
    labels = list(range(7))
    shards = [{"y_true": labels[k::3], "y_pred": labels[k::3],
               "correct": [[True]] * len(labels[k::3]), "dates": [["d"]] * len(labels[k::3])}
              for k in range(3)]
    monkeypatch.setattr(distributed, "gather_objects", lambda part, context: shards)
    monkeypatch.setattr(finetuning, "model_outputs", lambda *args: (
        torch.zeros(len(labels[0::3]), 1, 7), torch.tensor(labels[0::3]), [["d"]] * 3))
    result = finetuning._evaluate(None, None, torch.device("cpu"),
                                  context=distributed.Context(0, 3, 0))
    assert result["y_true"] == labels and result["y_pred"] == labels
    assert result["per_date"] == {"d": 1.0}


def test_results_report_voted_and_per_date_accuracy(data: dict, tmp_path: Path) -> None:
    seasons = run_finetune(data, tiny_finetune(epochs=1), tmp_path / "seasons.json")
    assert seasons["parameters"]["eval_dates"] == "seasons"
    assert sorted(seasons["per_date_accuracy"]["test"]) == DATES
    first = run_finetune(data, tiny_finetune(epochs=1, eval_dates="first"), tmp_path / "f.json")
    assert list(first["per_date_accuracy"]["test"]) == ["2018-01-03"]
    # the same model: its January accuracy is the first-date run's accuracy
    assert first["final"]["test"]["accuracy"] == pytest.approx(
        seasons["per_date_accuracy"]["test"]["2018-01-03"])
    with pytest.raises(ValueError, match="eval_dates must be one of"):
        tiny_finetune(eval_dates="winter")


def test_unversioned_results_from_before_eval_dates_count_as_first_date(
    data: dict, tmp_path: Path
) -> None:
    config = tiny_finetune(epochs=1, eval_dates="first", test_every_epoch=True)
    written = run_finetune(data, config, tmp_path / "r.json")
    older = {key: value for key, value in written.items() if key != "schema_version"}
    for key in ("eval_dates", "test_every_epoch"):
        del older["parameters"][key]
    provenance = written["provenance"]
    assert train.stale_reasons(older, config, provenance) == []
    assert train.stale_reasons(older, tiny_finetune(epochs=1), provenance) == [
        "parameters changed: eval_dates, test_every_epoch"]


def test_finetune_reads_back_what_it_wrote_and_reuses_it(data: dict, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    written = run_finetune(data, tiny_finetune(epochs=1), path)
    run = results.read_run(path)
    assert written["schema_version"] == results.SCHEMA_VERSION == run.schema_version
    assert run.to_json() == written == json.loads(path.read_text())
    # an incomplete file is run afresh; a newer schema is refused, naming the file
    io.write_json_atomic(path, written | {"complete": False})
    assert run_finetune(data, tiny_finetune(epochs=1), path)["final"] == written["final"]
    io.write_json_atomic(path, written | {"schema_version": results.SCHEMA_VERSION + 1})
    with pytest.raises(results.ResultsFileError, match=r"r\.json has results schema version"):
        run_finetune(data, tiny_finetune(epochs=1), path)


def test_split_finetune_keeps_the_seeded_weights(data: dict, tmp_path: Path) -> None:
    """Two runs of one seed, through reuse check, setup, loop, evaluation and writing, give
    the same weights and metrics bit for bit."""
    a, b = (run_finetune(data, tiny_finetune(epochs=1), tmp_path / f"{n}.json",
                         model_dir=tmp_path / n) for n in ("a", "b"))
    assert {k: a[k] for k in ("per_epoch", "final", "per_date_accuracy")} == {
        k: b[k] for k in ("per_epoch", "final", "per_date_accuracy")}
    weights = [models.load_pretrained(run["model"]["path"])[0].state_dict() for run in (a, b)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_corrupt_checkpoint_resumes_from_the_previous_epoch(
    data: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tiny_pretrain(epochs=2)
    straight = run_pretrain(data, config, tmp_path / "straight")
    run_dir = tmp_path / "corrupt"
    run_pretrain(data, config, run_dir)
    path = run_dir / train.CHECKPOINT_FILE
    previous = train.previous_checkpoint(path)
    assert torch.load(previous, weights_only=True)["epoch"] == 1
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, e.g. disk full
    with caplog.at_level(logging.WARNING, logger="rapid_utils.train"):
        resumed = run_pretrain(data, config, run_dir)
    assert "is unreadable" in caplog.text and "resuming from" in caplog.text
    assert resumed == straight  # epoch 2 retrained from epoch 1, bit for bit
    assert torch.load(path, weights_only=True)["epoch"] == 2

    for broken in (path, previous):
        broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="no readable checkpoint to resume from.*Delete"):
        run_pretrain(data, config, run_dir)


# --------------------------------------------------------------------------- unreadable samples


@pytest.fixture
def damaged(data: dict, tmp_path: Path) -> dict:
    """The tiny corpus with every PF-SR GeoTIFF of one training site truncated."""
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(data["corpus_root"], root)
    bad_site = data["train_index"]["sample_id"].iloc[0]
    for date in DATES:
        raster = layout.raster_path(root, bad_site, dt.date.fromisoformat(date))
        raster.write_bytes(raster.read_bytes()[:300])
    return data | {"corpus_root": root, "bad_site": bad_site}


def test_an_unreadable_sample_is_replaced_and_recorded(
    damaged: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = datasets.PlanetFusionDataset(
        damaged["corpus_root"], damaged["train_index"], damaged["band_stats"])
    item = dataset[0]
    assert item["sample_id"] != damaged["bad_site"]
    assert item["unreadable"].startswith(f"{damaged['bad_site']}: ")
    assert "corrupt or truncated" in item["unreadable"]
    assert dataset[0]["sample_id"] == item["sample_id"]  # the replacement is deterministic

    # one site of 22 is more than 1 % of the reads: the run stops and names it ...
    with pytest.raises(CorpusError, match=f"sample reads failed.*{damaged['bad_site']}"):
        run_finetune(damaged, tiny_finetune(epochs=1), tmp_path / "stopped.json")
    assert not (tmp_path / "stopped.json").exists()
    # ... and within a larger share it trains on, recording the site and the reason
    monkeypatch.setattr(runtime, "UNREADABLE_SHARE", 0.5)
    results = run_finetune(damaged, tiny_finetune(epochs=1), tmp_path / "r.json")
    assert list(results["unreadable_samples"]) == [damaged["bad_site"]]
    assert "corrupt or truncated" in results["unreadable_samples"][damaged["bad_site"]]
    run_pretrain(damaged, tiny_pretrain(epochs=2), tmp_path / "byol")
    checkpoint = torch.load(tmp_path / "byol" / train.CHECKPOINT_FILE, weights_only=True)
    assert set(checkpoint["unreadable_samples"]) <= {damaged["bad_site"]}  # if drawn


def test_a_wrong_size_raster_is_an_unreadable_sample(data: dict, tmp_path: Path) -> None:
    import shutil

    import rasterio

    root = tmp_path / "resized"
    shutil.copytree(data["corpus_root"], root)
    site = data["train_index"]["sample_id"].iloc[0]
    raster = layout.raster_path(root, site, dt.date.fromisoformat(DATES[0]))
    with rasterio.open(raster) as src:
        profile, values = src.profile, src.read()[:, :8, :8]
    with rasterio.open(raster, "w", **(profile | {"width": 8, "height": 8})) as dst:
        dst.write(values)
    dataset = datasets.PlanetFusionDataset(root, data["train_index"], data["band_stats"],
                                           date_sampling="first")
    item = dataset[0]
    assert item["sample_id"] != site and item["image"].shape[-1] == 16
    assert "8 x 8 px, expected 16 x 16" in item["unreadable"]


def test_too_many_unreadable_reads_stop_the_run_with_the_list() -> None:
    log = train.UnreadableLog()
    log.note({"label": torch.zeros(50), "unreadable": ["", "a: corrupt\nb: missing"] + [""] * 48})
    with pytest.raises(CorpusError, match=r"2 of 50 sample reads failed.*a: corrupt; b: missing"):
        log.check()
    log.note({"label": torch.zeros(150), "unreadable": [""] * 150})
    log.check()  # 2 of 200 is 1 %: within the share
    assert log.reasons == {"a": "corrupt", "b": "missing"}


def test_temporal_views_are_of_the_two_dates(data: dict) -> None:
    """Pretraining's views come from `augment.byol_views`: the second of a temporal pair is of
    the second date's image."""
    batch = {"image": torch.zeros(2, 4, 16, 16), "image2": torch.ones(2, 4, 16, 16)}
    dataset = datasets.open_dataset(data["corpus_root"], data["train_index"], data["band_stats"],
                                    date_sampling="pair")
    config = tiny_pretrain(positives="temporal", colour_jitter=0.0)
    view1, view2 = pretraining._byol_views(batch, config, torch.Generator().manual_seed(0),
                                           torch.device("cpu"), dataset)
    torch.testing.assert_close(view1, batch["image"])  # constants, up to rounding
    torch.testing.assert_close(view2, batch["image2"])
    same = pretraining._byol_views(batch, tiny_pretrain(colour_jitter=0.0),
                                   torch.Generator().manual_seed(0), torch.device("cpu"), dataset)
    torch.testing.assert_close(same[1], batch["image"])  # augment: both of the first image


# --------------------------------------------------------------------------- stems


def test_configs_check_their_stem() -> None:
    assert tiny_pretrain().stem == tiny_finetune().stem == "imagenet"
    with pytest.raises(ValueError, match=r"stem must be one of \('imagenet', 'small'"):
        tiny_pretrain(stem="tiny")
    with pytest.raises(ValueError, match=r"stem must be one of \('imagenet', 'small'"):
        tiny_finetune(stem="tiny")
    with pytest.raises(ValueError, match="init 'imagenet' needs stem 'imagenet'.*'small'"):
        tiny_finetune(init="imagenet", stem="small")


def test_records_older_than_the_stem_are_imagenets() -> None:
    """A checkpoint or results file written before `stem` resumes or is reused as
    "imagenet", the stem every network had then."""
    for config in (tiny_pretrain(), tiny_finetune()):
        older = dataclasses.asdict(config)
        del older["stem"]
        assert runtime.changed_fields(config, older) == []
        assert runtime.changed_fields(dataclasses.replace(config, stem="small"), older) == [
            "stem"]


def test_finetune_from_byol_takes_the_checkpoints_stem(data: dict, tmp_path: Path) -> None:
    checkpoint = tmp_path / "byol.pt"
    encoder = models.build_model("resnet18", 4, 0, stem="small-stride2")
    torch.save({models.BYOL_ENCODER_KEY: encoder.state_dict(),
                "config": {"arch": "resnet18", "stem": "small-stride2"}}, checkpoint)
    with pytest.raises(ValueError, match=r"stem 'imagenet' differs from the stem 'small-stride2'"):
        run_finetune(data, tiny_finetune(epochs=1, init=f"byol:{checkpoint}"),
                     tmp_path / "mismatch.json")
    config = tiny_finetune(epochs=1, init=f"byol:{checkpoint}", stem="small-stride2")
    written = run_finetune(data, config, tmp_path / "r.json", model_dir=tmp_path / "model")
    assert written["parameters"]["stem"] == "small-stride2"
    description = json.loads((tmp_path / "model" / models.CLASSIFIER_DESCRIPTION).read_text())
    assert description["stem"] == "small-stride2"
    model, _ = models.load_pretrained(tmp_path / "model")
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
