"""Self-describing encoder export: `rapid-utils export`, `models.load_pretrained`, normalisation
checks, older checkpoints, and loading with plain torchvision as the README shows."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import safetensors
import torch

from rapid_utils import cli, datasets, io, models, splits, train
from rapid_utils.corpus import layout
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.synthetic import generate_corpus

DATES = ["2018-01-03", "2018-04-03", "2018-07-02", "2018-10-05"]
README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny BYOL checkpoint (resnet18, 1 epoch, 16 px) on a 30-site corpus, and its export."""
    tmp = tmp_path_factory.mktemp("export")
    root = generate_corpus(tmp / "c", n_sites=30, seed=1, size=16, dates=DATES, workers=1,
                           progress=False)
    index = build_index(root, progress=False)
    split = splits.assign_splits(index, seed=0)
    train_index = index[split == "train"]
    band_stats = datasets.compute_band_stats(root, train_index, progress=False)
    split_fingerprint = splits.fingerprint(index, split)
    config = train.PretrainConfig(
        arch="resnet18", epochs=1, batch_size=8, base_lr=0.5, warmup_epochs=0, image_size=16,
        hidden_dim=32, projection_dim=16, knn_k=3,
    )
    train.pretrain(config, root, train_index, index[split == "val"], band_stats, tmp / "byol",
                   progress=False, split_fingerprint=split_fingerprint)
    checkpoint = tmp / "byol" / train.CHECKPOINT_FILE
    out = tmp / "export"
    description = models.export_encoder(checkpoint, out)
    return {"checkpoint": checkpoint, "out": out, "description": description,
            "band_stats": band_stats, "split_fingerprint": split_fingerprint, "config": config,
            "corpus": (root, train_index, index[split == "val"])}


def stored_values(n: int = 3, size: int = 16) -> torch.Tensor:
    """A batch of plausible stored values (reflectance x 10000)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 4000, (n, 4, size, size), generator=generator).to(torch.float32)


def test_load_pretrained_gives_the_checkpoints_encoder(pretrained: dict) -> None:
    reference = models.build_model("resnet18", 4, 0, f"byol:{pretrained['checkpoint']}").eval()
    for path in (pretrained["out"], pretrained["description"]):  # the folder or its json
        model, normalisation = models.load_pretrained(path)
        assert model.conv1.in_channels == 4 and isinstance(model.fc, torch.nn.Identity)
        assert not model.training
        x = normalisation.normalise(stored_values())
        with torch.no_grad():
            features = model(x)
            assert features.shape == (3, 512)
            assert torch.equal(features, reference(x))


def test_encoder_json_describes_the_weights(pretrained: dict) -> None:
    card = json.loads(pretrained["description"].read_text())
    band_stats = pretrained["band_stats"]
    assert card["bands"] == list(layout.BANDS) == ["blue", "green", "red", "nir"]
    assert card["scale"] == layout.REFLECTANCE_SCALE
    assert card["mean"] == pytest.approx(list(band_stats.mean))
    assert card["std"] == pytest.approx(list(band_stats.std))
    assert card["input_size"] == 16
    assert card["gsd_m"] == layout.PIXEL_SIZE_M == 3.0
    assert (card["arch"], card["in_channels"], card["feature_dim"]) == ("resnet18", 4, 512)
    assert card["class_names"] is None
    assert card["split_fingerprint"] == pretrained["split_fingerprint"]
    assert card["band_stats_fingerprint"] == band_stats.fingerprint()
    assert {"torch", "torchvision", "rapid_utils"} <= set(card["versions"])
    assert card["checkpoint_sha256"] == io.file_sha256(pretrained["checkpoint"])
    weights = pretrained["out"] / models.EXPORT_WEIGHTS
    assert card["weights_sha256"] == io.file_sha256(weights)
    assert card["pretraining"]["image_size"] == 16 and card["checkpoint_epoch"] == 1
    # the safetensors header carries the same description, for a weights file alone
    with safetensors.safe_open(weights, framework="pt") as file:
        header = json.loads(file.metadata()[models.EXPORT_FORMAT])
    assert header == {key: value for key, value in card.items() if key != "weights_sha256"}


def test_model_card_says_what_it_is(pretrained: dict) -> None:
    text = (pretrained["out"] / models.EXPORT_CARD).read_text()
    band_stats = pretrained["band_stats"]
    assert "resnet18" in text and "blue, green, red, nir" in text
    assert f"| blue | {band_stats.mean[0]:.2f} | {band_stats.std[0]:.2f} |" in text
    assert "does not record which corpus" in text
    assert "load_pretrained" in text and "1 of 1 epochs" in text
    assert "close to random ones" in text  # 1 epoch at lars_trust 0.001 hardly moves them


def test_normalise_uses_the_recorded_statistics(pretrained: dict) -> None:
    _, normalisation = models.load_pretrained(pretrained["out"])
    values = stored_values()
    mean = torch.tensor(normalisation.mean).view(-1, 1, 1)
    std = torch.tensor(normalisation.std).view(-1, 1, 1)
    torch.testing.assert_close(normalisation.normalise(values), (values - mean) / std)
    values[0, 2, 0, 0] = 0
    assert normalisation.normalise(values, nodata=0)[0, 2, 0, 0] == 0.0
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, H, W\)"):
        normalisation.normalise(values[:, :3])


def test_check_refuses_other_bands_or_scale(pretrained: dict) -> None:
    _, normalisation = models.load_pretrained(pretrained["out"])
    normalisation.check(("blue", "green", "red", "nir"), 10_000)
    with pytest.raises(ValueError) as error:
        normalisation.check(("red", "green", "blue", "nir"), 10_000)
    assert "('red', 'green', 'blue', 'nir')" in str(error.value)
    assert "('blue', 'green', 'red', 'nir')" in str(error.value)
    with pytest.raises(ValueError, match=r"scale is 1, the weights expect 10000"):
        normalisation.check(("blue", "green", "red", "nir"), 1.0)


def test_checkpoint_without_provenance_is_refused_with_the_fix(
    pretrained: dict, tmp_path: Path
) -> None:
    checkpoint = torch.load(pretrained["checkpoint"], map_location="cpu", weights_only=True)
    older = tmp_path / "older.pt"
    torch.save({key: value for key, value in checkpoint.items() if key != "provenance"}, older)
    with pytest.raises(ValueError, match=r"provenance\.bands.*provenance\.std.*re-run the "
                       r"pretraining"):
        models.export_encoder(older, tmp_path / "out")
    partial = tmp_path / "partial.pt"
    torch.save(checkpoint | {"provenance": {key: value for key, value in
                                            checkpoint["provenance"].items() if key != "std"}},
               partial)
    with pytest.raises(ValueError, match=r"lacks provenance\.std:"):
        models.export_encoder(partial, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert cli.main(["export", "--checkpoint", str(older), "--out", str(tmp_path / "o")]) == 2


def test_cli_export_end_to_end(pretrained: dict, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    assert cli.main(["export", "--checkpoint", str(pretrained["checkpoint"]),
                     "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        models.EXPORT_WEIGHTS, models.EXPORT_DESCRIPTION, models.EXPORT_CARD}
    model, normalisation = models.load_pretrained(out)
    assert normalisation.input_size == 16 and normalisation.gsd_m == 3.0
    reference, _ = models.load_pretrained(pretrained["out"])
    with torch.no_grad():
        x = normalisation.normalise(stored_values())
        assert torch.equal(model(x), reference(x))
    missing = ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "n")]
    assert cli.main(missing) == 2


def test_load_pretrained_refuses_mismatched_weights(pretrained: dict, tmp_path: Path) -> None:
    with pytest.raises(models.WeightsUnavailableError, match="no encoder.json"):
        models.load_pretrained(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / models.EXPORT_DESCRIPTION).write_bytes(pretrained["description"].read_bytes())
    (other / models.EXPORT_WEIGHTS).write_bytes(b"not the exported weights")
    with pytest.raises(models.WeightsUnavailableError, match="sha256 differs"):
        models.load_pretrained(other)


def _readme_snippet() -> str:
    """The README's plain-torchvision loading code (its "Using the pretrained weights" block)."""
    section = README.read_text().split("### Using the pretrained weights", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def _check_readme_snippet(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's snippet, run beside `export` (its export/ folder), gives the features
    `models.load_pretrained` gives."""
    monkeypatch.chdir(export.parent)
    x = stored_values()
    namespace = {"x": x}
    with torch.no_grad():
        exec(_readme_snippet(), namespace)
        model, normalisation = models.load_pretrained(export)
        expected = model(normalisation.normalise(x))
    torch.testing.assert_close(namespace["features"], expected)


def test_plain_torchvision_loading_as_the_readme_shows(
    pretrained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert 'load_file("export/encoder.safetensors")' in _readme_snippet()
    _check_readme_snippet(pretrained["out"], monkeypatch)


# --------------------------------------------------------------------------- stems


@pytest.fixture(scope="module")
def small_stem(pretrained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same tiny BYOL run with the "small-stride2" stem, and its export."""
    tmp = tmp_path_factory.mktemp("small_stem")
    root, train_index, val_index = pretrained["corpus"]
    config = dataclasses.replace(pretrained["config"], stem="small-stride2")
    train.pretrain(config, root, train_index, val_index, pretrained["band_stats"],
                   tmp / "byol", progress=False, split_fingerprint=pretrained["split_fingerprint"])
    checkpoint = tmp / "byol" / train.CHECKPOINT_FILE
    out = tmp / "export"
    return {"checkpoint": checkpoint, "out": out,
            "description": models.export_encoder(checkpoint, out)}


def test_the_stem_travels_from_pretraining_to_the_loaded_encoder(small_stem: dict) -> None:
    checkpoint = torch.load(small_stem["checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["config"]["stem"] == "small-stride2"
    assert checkpoint[models.BYOL_ENCODER_KEY]["conv1.weight"].shape == (64, 4, 3, 3)
    card = json.loads(small_stem["description"].read_text())
    assert card["stem"] == "small-stride2" and card["pretraining"]["stem"] == "small-stride2"
    model, normalisation = models.load_pretrained(small_stem["out"])
    assert models.model_stem(model) == "small-stride2"
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, torch.nn.Identity)
    reference = models.build_model("resnet18", 4, 0, f"byol:{small_stem['checkpoint']}").eval()
    assert models.model_stem(reference) == "small-stride2"  # the checkpoint's, unasked
    x = normalisation.normalise(stored_values())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    text = (small_stem["out"] / models.EXPORT_CARD).read_text()
    assert "stem `small-stride2`" in text
    assert "nn.Conv2d(4, 64, 3, stride=2, padding=1, bias=False)" in text
    assert "maxpool by `nn.Identity()`" in text


def test_the_imagenet_stem_is_recorded_and_older_checkpoints_read_as_it(
    pretrained: dict, tmp_path: Path
) -> None:
    card = json.loads(pretrained["description"].read_text())
    assert card["stem"] == "imagenet"
    assert "nn.Conv2d(4, 64, 7, stride=2, padding=3, bias=False)" in (
        pretrained["out"] / models.EXPORT_CARD).read_text()
    checkpoint = torch.load(pretrained["checkpoint"], map_location="cpu", weights_only=True)
    config = {key: value for key, value in checkpoint["config"].items() if key != "stem"}
    older = tmp_path / "older.pt"
    torch.save(checkpoint | {"config": config}, older)  # written before the stem was recorded
    description = json.loads(models.export_encoder(older, tmp_path / "out").read_text())
    assert description["stem"] == "imagenet"
    model, _ = models.load_pretrained(tmp_path / "out")
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, torch.nn.MaxPool2d)
    # an export from before the field loads with ImageNet's stem too
    del description["stem"]
    (tmp_path / "out" / models.EXPORT_DESCRIPTION).write_text(json.dumps(description))
    model, _ = models.load_pretrained(tmp_path / "out")
    assert models.model_stem(model) == "imagenet"


def test_a_saved_classifier_keeps_its_stem(small_stem: dict, tmp_path: Path) -> None:
    _, normalisation = models.load_pretrained(small_stem["out"])
    model = models.build_model("resnet18", 4, 3, f"byol:{small_stem['checkpoint']}").eval()
    description = models.save_classifier(model, tmp_path, "resnet18", ["a", "b", "c"],
                                         normalisation, {})
    assert json.loads(description.read_text())["stem"] == "small-stride2"
    loaded, _ = models.load_pretrained(tmp_path)
    assert models.model_stem(loaded) == "small-stride2"
    x = normalisation.normalise(stored_values())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_plain_torchvision_loading_of_a_small_stem_as_the_readme_shows(
    small_stem: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    _check_readme_snippet(small_stem["out"], monkeypatch)


def test_the_card_of_a_narrow_encoder_says_torchvision_alone_cannot_build_it() -> None:
    narrow = models._plain_recipe("resnet18-w32", "small-stride2", 4)
    assert "build_model('resnet18-w32', 4, 0, stem='small-stride2')" in narrow
    assert "torchvision.models.get_model('resnet18')" in models._plain_recipe(
        "resnet18", "imagenet", 4)
