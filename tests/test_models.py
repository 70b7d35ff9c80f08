"""The model factory: shapes, ImageNet conv1 adaptation from a local file, BYOL init, errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from rapid_utils.models import (
    WeightsUnavailableError,
    adapt_rgb_filters,
    build_model,
    feature_dim,
)


@pytest.fixture(scope="module")
def resnet18_imagenet_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A torchvision-format resnet18 state dict (random weights stand in for ImageNet's)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_resnet50_takes_four_bands_and_gives_seven_classes() -> None:
    model = build_model().eval()
    assert model.conv1.in_channels == 4
    assert feature_dim(model) == 2048
    with torch.no_grad():
        assert model(torch.randn(2, 4, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("num_classes", [0, None])
def test_encoder_only(num_classes: int | None) -> None:
    model = build_model("resnet18", num_classes=num_classes).eval()
    assert isinstance(model.fc, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 4, 32, 32)).shape == (2, feature_dim(model)) == (2, 512)


def test_imagenet_conv1_follows_the_band_rule(resnet18_imagenet_like: tuple[Path, dict]) -> None:
    path, state = resnet18_imagenet_like
    model = build_model("resnet18", init="imagenet", imagenet_weights_path=path)
    rgb = state["conv1.weight"]
    new = model.conv1.weight.detach()
    assert new.shape == (64, 4, 7, 7)
    torch.testing.assert_close(new[:, 0], 0.75 * rgb[:, 2])  # blue <- B
    torch.testing.assert_close(new[:, 1], 0.75 * rgb[:, 1])  # green <- G
    torch.testing.assert_close(new[:, 2], 0.75 * rgb[:, 0])  # red <- R
    torch.testing.assert_close(new[:, 3], 0.75 * rgb.mean(dim=1))  # NIR <- mean(RGB)
    torch.testing.assert_close(new.sum(dim=1), rgb.sum(dim=1))  # activation scale kept
    torch.testing.assert_close(adapt_rgb_filters(rgb), new)
    # the rest is ImageNet's, the head is new
    key = "layer4.1.conv2.weight"
    torch.testing.assert_close(model.state_dict()[key], state[key])
    assert model.fc.out_features == 7 and model.fc.weight.shape == (7, 512)


def test_missing_imagenet_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsUnavailableError, match="nowhere.pth"):
        build_model("resnet18", init="imagenet", imagenet_weights_path=path)


def test_corrupt_imagenet_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a state dict")
    with pytest.raises(WeightsUnavailableError, match="broken.pth"):
        build_model("resnet18", init="imagenet", imagenet_weights_path=path)


def test_imagenet_file_of_another_arch(resnet18_imagenet_like: tuple[Path, dict]) -> None:
    with pytest.raises(WeightsUnavailableError, match="resnet34"):
        build_model("resnet34", init="imagenet", imagenet_weights_path=resnet18_imagenet_like[0])


def test_offline_download_prints_no_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError, match="imagenet_weights_path"):
        build_model("resnet18", init="imagenet")
    captured = capsys.readouterr()
    assert "://" not in captured.err + captured.out  # torch.hub's "Downloading: <url>" line


def test_no_network_no_file_says_how_to_supply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def offline(*args: object, **kwargs: object) -> dict:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="imagenet_weights_path") as info:
        build_model("resnet18", init="imagenet")
    assert "TORCH_HOME" in str(info.value)


def test_imagenet_needs_four_bands(resnet18_imagenet_like: tuple[Path, dict]) -> None:
    with pytest.raises(ValueError, match="in_channels"):
        build_model(
            "resnet18",
            in_channels=3,
            init="imagenet",
            imagenet_weights_path=resnet18_imagenet_like[0],
        )


def test_byol_checkpoint_loads_the_online_encoder(tmp_path: Path) -> None:
    encoder = build_model("resnet18", num_classes=0)
    path = tmp_path / "byol.pt"
    torch.save({"online_encoder": encoder.state_dict(), "step": 3}, path)
    model = build_model("resnet18", num_classes=7, init=f"byol:{path}")
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)
    assert model.fc.out_features == 7


def test_byol_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="missing.pt"):
        build_model("resnet18", init=f"byol:{tmp_path / 'missing.pt'}")
    path = tmp_path / "no_encoder.pt"
    torch.save({"step": 3}, path)
    with pytest.raises(WeightsUnavailableError, match="online_encoder"):
        build_model("resnet18", init=f"byol:{path}")


def test_unknown_init() -> None:
    with pytest.raises(ValueError, match="init"):
        build_model("resnet18", init="imagenet21k")
