"""The model factory: torchvision ResNets for 4-band (Blue, Green, Red, NIR) Planet Fusion chips.

One function, `build_model`, makes every network of the compendium from explicit arguments: the
architecture, the number of input bands, the number of classes (0 for a bare encoder) and where the
initial weights come from (`random`, `imagenet`, or `byol:<checkpoint path>`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

BAND_ORDER = ("blue", "green", "red", "nir")
"""The input channels the ImageNet adaptation assumes, in this order."""

# Index of each of our visible bands in ImageNet's RGB-ordered conv1 input (blue, green, red).
_RGB_INDEX_OF_BAND = (2, 1, 0)

BYOL_ENCODER_KEY = "online_encoder"
"""Key of the encoder state dict inside a BYOL checkpoint file (see `build_model`)."""


class WeightsUnavailableError(RuntimeError):
    """The initial weights an `init` asks for cannot be had (no network, missing or broken file)."""


def build_model(
    arch: str = "resnet50",
    in_channels: int = 4,
    num_classes: int | None = 7,
    init: str = "random",
    imagenet_weights_path: str | Path | None = None,
) -> nn.Module:
    """Build a torchvision ResNet for `in_channels` bands with a new `num_classes` head.

    `arch` is any torchvision model name with a `conv1` stem and an `fc` head (resnet18/34/50/101/
    152, resnext, wide_resnet). `num_classes` 0 or None returns the bare encoder (`fc` is
    `nn.Identity`), whose output width `feature_dim(model)` gives.

    `init` chooses the initial weights:

    - ``"random"``: torchvision's default initialisation.
    - ``"imagenet"``: torchvision's ImageNet weights for `arch` (its weights enum's DEFAULT, i.e.
      ``ResNet50_Weights.IMAGENET1K_V2`` for resnet50), read from `imagenet_weights_path` when given
      (a state dict in torchvision's format, for offline clusters) or else through torchvision's
      cache/download under ``$TORCH_HOME``. The classifier head is always new. The 3-channel
      conv1 is adapted to our band order (Blue, Green, Red, NIR), which needs ``in_channels == 4``:
      band 0 (blue) gets ImageNet's B filter (RGB index 2), band 1 (green) gets G (index 1),
      band 2 (red) gets R (index 0), and NIR gets the mean of the three RGB filters. All four
      filters are then multiplied by 3/4, so each output unit's sum over input channels equals
      the original one: for inputs of similar magnitude in every band the first activations keep
      ImageNet's scale.
    - ``"byol:<path>"``: the encoder of a BYOL checkpoint, a file written with `torch.save` holding
      a dict whose key ``"online_encoder"`` is the state dict of
      ``build_model(arch, in_channels, num_classes=0)``. The classifier head is new.

    Raises `WeightsUnavailableError` (with what to do) when the weights cannot be loaded; it never
    falls back to random weights.
    """
    if init not in ("random", "imagenet") and not init.startswith("byol:"):
        raise ValueError(f"init must be 'random', 'imagenet' or 'byol:<path>', got {init!r}")
    model = torchvision.models.get_model(arch, weights=None)
    if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "fc")):
        raise ValueError(f"{arch!r} lacks a ResNet-style conv1 and fc; use a torchvision ResNet")
    if init == "imagenet":
        if in_channels != len(BAND_ORDER):
            raise ValueError(
                f"init='imagenet' maps RGB filters to the bands {BAND_ORDER}; got in_channels="
                f"{in_channels}"
            )
        state = _imagenet_state_dict(arch, imagenet_weights_path)
        _load(model, state, f"ImageNet weights for {arch}")
        model.conv1 = _adapt_conv1(model.conv1)
    else:
        model.conv1 = _replace_in_channels(model.conv1, in_channels)

    width = model.fc.in_features
    model.fc = nn.Identity()
    if init.startswith("byol:"):
        path = Path(init.removeprefix("byol:"))
        _load(model, _byol_encoder_state_dict(path), f"BYOL checkpoint {path}")
    if num_classes:
        model.fc = nn.Linear(width, num_classes)
    model.feature_dim = width
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of the features a `build_model` network feeds its head (2048 for resnet50)."""
    return int(model.feature_dim)


def adapt_rgb_filters(weight: torch.Tensor) -> torch.Tensor:
    """Map (out, 3, k, k) RGB filters to (out, 4, k, k) B, G, R, NIR filters (rule: build_model)."""
    visible = weight[:, list(_RGB_INDEX_OF_BAND)]
    nir = weight.mean(dim=1, keepdim=True)
    return torch.cat([visible, nir], dim=1) * (3 / 4)


def _adapt_conv1(conv: nn.Conv2d) -> nn.Conv2d:
    new = _replace_in_channels(conv, len(BAND_ORDER))
    with torch.no_grad():
        new.weight.copy_(adapt_rgb_filters(conv.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _replace_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A freshly initialised copy of `conv` reading `in_channels` channels."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )


def _how_to_supply(arch: str) -> str:
    return (
        "To supply them, on a machine with internet run once "
        f"`torchvision.models.get_model_weights({arch!r}).DEFAULT.get_state_dict()`, then either "
        "copy torchvision's cache ($TORCH_HOME/hub/checkpoints) here and set TORCH_HOME, or save "
        "the state dict with torch.save and pass its path as imagenet_weights_path."
    )


def _imagenet_state_dict(arch: str, path: str | Path | None) -> dict[str, torch.Tensor]:
    """ImageNet weights in torchvision's format, from `path` or torchvision's cache/download."""
    if path is not None:
        return _read_state_dict(Path(path), f"ImageNet weights for {arch}", _how_to_supply(arch))
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    # OSError covers URLError (no network) and unreadable caches; RuntimeError a bad hash or file.
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise WeightsUnavailableError(
            f"Could not get {weights} ({err}). {_how_to_supply(arch)}"
        ) from err


def _byol_encoder_state_dict(path: Path) -> dict[str, torch.Tensor]:
    hint = "Run BYOL pretraining first, or pass the path of an existing checkpoint."
    checkpoint = _read_state_dict(path, "BYOL checkpoint", hint)
    if BYOL_ENCODER_KEY not in checkpoint:
        raise WeightsUnavailableError(
            f"BYOL checkpoint {path} has no {BYOL_ENCODER_KEY!r} entry (keys: "
            f"{sorted(checkpoint)[:10]}). {hint}"
        )
    return checkpoint[BYOL_ENCODER_KEY]


def _read_state_dict(path: Path, what: str, hint: str) -> dict:
    if not path.is_file():
        raise WeightsUnavailableError(f"{what}: no file at {path}. {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise WeightsUnavailableError(f"{what}: cannot read {path} ({err}). {hint}") from err
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{what}: {path} holds a {type(state).__name__}, not a dict")
    return state


def _load(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` strictly, turning a key or shape mismatch into a `WeightsUnavailableError`."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsUnavailableError(f"{what}: cannot be loaded into this model: {err}") from err
