"""The model factory: shapes, stems, ImageNet conv1 adaptation from a local file, BYOL init,
errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from rapid_utils.models import (
    STEMS,
    WeightsUnavailableError,
    adapt_rgb_filters,
    arch_width,
    build_model,
    feature_dim,
    init_stem,
    model_stem,
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


# --------------------------------------------------------------------------- stems


def _after_stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


@pytest.mark.parametrize(("stem", "side_32", "side_64", "kernel", "pool"), [
    ("imagenet", 8, 16, 7, nn.MaxPool2d),  # 7x7 stride 2, max-pool stride 2
    ("small", 32, 64, 3, nn.Identity),  # 3x3 stride 1, no max-pool
    ("small-stride2", 16, 32, 3, nn.Identity),  # 3x3 stride 2, no max-pool
])
def test_stem_feature_maps(stem: str, side_32: int, side_64: int, kernel: int,
                           pool: type) -> None:
    model = build_model("resnet18", 4, 0, stem=stem).eval()
    assert model_stem(model) == stem
    conv = model.conv1
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 64, (kernel, kernel))
    assert conv.bias is None and isinstance(model.maxpool, pool)
    with torch.no_grad():
        for px, side in ((32, side_32), (64, side_64)):
            x = torch.randn(2, 4, px, px)
            assert _after_stem(model, x).shape == (2, 64, side, side)
            assert model(x).shape == (2, feature_dim(model)) == (2, 512)
    assert build_model("resnet18", 3, 5, stem=stem).conv1.in_channels == 3


def test_default_stem_is_imagenets() -> None:
    assert model_stem(build_model("resnet18", 4, 0)) == "imagenet" == STEMS[0]


def test_unknown_stem_lists_the_stems() -> None:
    with pytest.raises(ValueError, match=r"stem must be one of \('imagenet', 'small', "
                       r"'small-stride2'\), got 'tiny'"):
        build_model("resnet18", stem="tiny")


def test_imagenet_weights_need_the_imagenet_stem(
    resnet18_imagenet_like: tuple[Path, dict]
) -> None:
    path = resnet18_imagenet_like[0]
    with pytest.raises(ValueError, match="init='imagenet' needs stem='imagenet'.*'small'"):
        build_model("resnet18", init="imagenet", imagenet_weights_path=path, stem="small")
    model = build_model("resnet18", init="imagenet", imagenet_weights_path=path, stem="imagenet")
    assert model_stem(model) == "imagenet"


def test_byol_init_takes_the_checkpoints_stem(tmp_path: Path) -> None:
    encoder = build_model("resnet18", num_classes=0, stem="small-stride2")
    path = tmp_path / "byol.pt"
    torch.save({"online_encoder": encoder.state_dict(),
                "config": {"arch": "resnet18", "stem": "small-stride2"}}, path)
    for stem in (None, "small-stride2"):
        model = build_model("resnet18", num_classes=7, init=f"byol:{path}", stem=stem)
        assert model_stem(model) == "small-stride2" and isinstance(model.maxpool, nn.Identity)
        assert model.conv1.stride == (2, 2) and model.conv1.kernel_size == (3, 3)
        torch.testing.assert_close(model.conv1.weight, encoder.conv1.weight)
    with pytest.raises(ValueError, match=r"stem 'small' differs from the stem 'small-stride2' "
                       r"that BYOL checkpoint .*byol\.pt was pretrained with"):
        build_model("resnet18", init=f"byol:{path}", stem="small")
    assert init_stem(f"byol:{path}", "small") == "small-stride2"
    assert init_stem("random", "small") == "small"
    assert init_stem("imagenet", "small") == "imagenet"


def test_a_checkpoint_older_than_stems_is_imagenets(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"online_encoder": build_model("resnet18", num_classes=0).state_dict(),
                "config": {"arch": "resnet18"}}, path)  # no "stem": written before it
    assert model_stem(build_model("resnet18", init=f"byol:{path}")) == "imagenet"
    assert init_stem(f"byol:{path}", "small") == "imagenet"
    with pytest.raises(ValueError, match="stem 'small' differs from the stem 'imagenet'"):
        build_model("resnet18", init=f"byol:{path}", stem="small")


# --------------------------------------------------------------------------- widths


@pytest.mark.parametrize("stem", ["imagenet", "small-stride2"])
def test_a_width_narrows_every_stage_and_keeps_the_stem(stem: str) -> None:
    model = build_model("resnet18-w32", 4, 0, stem=stem).eval()
    assert arch_width("resnet18-w32") == 32 and arch_width("resnet18") is None
    assert model.conv1.out_channels == 32 and model_stem(model) == stem
    widths = [stage[-1].conv2.out_channels for stage in
              (model.layer1, model.layer2, model.layer3, model.layer4)]
    assert widths == [32, 64, 128, 256] and feature_dim(model) == 256
    with torch.no_grad():
        assert model(torch.randn(2, 4, 32, 32)).shape == (2, 256)
    full = build_model("resnet18", 4, 0, stem=stem)
    count = sum(p.numel() for p in model.parameters())
    assert 0.2 < count / sum(p.numel() for p in full.parameters()) < 0.3  # ~a quarter
    # initialised as torchvision initialises a ResNet: He-normal convolutions (fan out)
    std = model.layer4[0].conv1.weight.std().item()
    assert std == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.1)
    assert build_model("resnet50-w16", 4, 3).fc.in_features == 16 * 8 * 4  # Bottleneck x4


def test_a_width_is_checked_and_refuses_imagenet_weights() -> None:
    for arch in ("resnet18-w", "resnet18-w0", "resnet18-wide"):
        with pytest.raises(ValueError, match="must be a positive integer"):
            build_model(arch)
    with pytest.raises(ValueError, match="a width needs a torchvision ResNet"):
        build_model("vgg11-w32")
    with pytest.raises(ValueError, match="init='imagenet' needs torchvision's own widths.*"
                       "'resnet18'"):
        build_model("resnet18-w32", init="imagenet")


def test_a_narrow_byol_checkpoint_loads(tmp_path: Path) -> None:
    encoder = build_model("resnet18-w32", num_classes=0, stem="small-stride2")
    path = tmp_path / "byol.pt"
    torch.save({"online_encoder": encoder.state_dict(),
                "config": {"arch": "resnet18-w32", "stem": "small-stride2"}}, path)
    model = build_model("resnet18-w32", num_classes=7, init=f"byol:{path}")
    torch.testing.assert_close(model.layer4[1].conv2.weight, encoder.layer4[1].conv2.weight)
    assert model.fc.in_features == 256
