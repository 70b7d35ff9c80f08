"""The model factory: torchvision ResNets for 4-band (Blue, Green, Red, NIR) Planet Fusion chips.

One function, `build_model`, makes every network of the compendium from explicit arguments: the
architecture, the number of input bands, the number of classes (0 for a bare encoder), where the
initial weights come from (`random`, `imagenet`, or `byol:<checkpoint path>`) and the stem (`STEMS`:
ImageNet's, or a small-input one for chips of a few dozen pixels).

`export_encoder` writes a BYOL checkpoint's encoder as weights that describe themselves (safetensors
plus a JSON of bands, scale, per-band statistics, input size and ground sampling distance, and a
model card); `load_pretrained` reads them back with their `Normalisation`.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torchvision
from torch import nn

from rapid_utils.bandstats import normalise
from rapid_utils.corpus import layout
from rapid_utils.io import atomic_path, file_sha256, write_json_atomic
from rapid_utils.provenance import versions

BAND_ORDER = ("blue", "green", "red", "nir")
"""The input channels the ImageNet adaptation assumes, in this order."""

# Index of each of our visible bands in ImageNet's RGB-ordered conv1 input (blue, green, red).
_RGB_INDEX_OF_BAND = (2, 1, 0)

BYOL_ENCODER_KEY = "online_encoder"
"""Key of the encoder state dict inside a BYOL checkpoint file (see `build_model`)."""

STEMS = ("imagenet", "small", "small-stride2")
"""The stems (`conv1` and `maxpool`) `build_model` offers; `conv1` reads `in_channels` bands into
the architecture's own width (64), without bias.

- ``"imagenet"``: torchvision's, a 7x7 stride-2 conv1 then a 3x3 stride-2 max-pool: a quarter of
  the input side (32 px views -> 8 x 8 feature maps). The only stem ImageNet weights fit.
- ``"small"``: a 3x3 stride-1 conv1 and no max-pool (`nn.Identity`), the small-image stem of
  SimCLR and BYOL on CIFAR, solo-learn and lightly: the full input side (32 -> 32).
- ``"small-stride2"``: a 3x3 stride-2 conv1 and no max-pool: half the input side (32 -> 16), a
  quarter of "small"'s compute.
"""

_SMALL_STEM_STRIDE = {"small": 1, "small-stride2": 2}  # conv1's stride in each small stem


class WeightsUnavailableError(RuntimeError):
    """The initial weights an `init` asks for cannot be had (no network, missing or broken file)."""


def build_model(
    arch: str = "resnet50",
    in_channels: int = 4,
    num_classes: int | None = 7,
    init: str = "random",
    imagenet_weights_path: str | Path | None = None,
    stem: str | None = None,
) -> nn.Module:
    """Build a torchvision ResNet for `in_channels` bands with a new `num_classes` head.

    `arch` is any torchvision model name with a `conv1` stem and an `fc` head (resnet18/34/50/101/
    152, resnext, wide_resnet), or a ResNet's name with a width, ``"resnet18-w32"``
    (`arch_width`): its stages w, 2w, 4w and 8w channels wide instead of 64 to 512. `num_classes`
    0 or None returns the bare encoder (`fc` is `nn.Identity`), whose output width
    `feature_dim(model)` gives.

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
      ``build_model(arch, in_channels, num_classes=0, stem=<its config's stem>)``. The
      classifier head is new.

    `stem` is one of `STEMS` (its conv1 as wide as the first stage); None means "imagenet", or
    for a BYOL init the stem its checkpoint records (``checkpoint["config"]["stem"]``;
    "imagenet" for checkpoints older than the field).
    A stem given explicitly that differs from the checkpoint's, or init "imagenet" with another
    stem than "imagenet" (ImageNet's 7x7 filters fit no other), raises ValueError. The stem is
    recorded as ``model.stem`` (`model_stem`).

    Raises `WeightsUnavailableError` (with what to do) when the weights cannot be loaded; it never
    falls back to random weights.
    """
    if init not in ("random", "imagenet") and not init.startswith("byol:"):
        raise ValueError(f"init must be 'random', 'imagenet' or 'byol:<path>', got {init!r}")
    if stem is not None and stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    byol_state = None
    if init.startswith("byol:"):
        path = Path(init.removeprefix("byol:"))
        checkpoint = _read_state_dict(path, "BYOL checkpoint", _BYOL_HINT)
        byol_state = _encoder_entry(checkpoint, path)
        recorded = _recorded_stem(checkpoint)
        if stem not in (None, recorded):
            raise ValueError(f"stem {stem!r} differs from the stem {recorded!r} that BYOL "
                             f"checkpoint {path} was pretrained with: set stem to {recorded!r}")
        stem = recorded
    stem = stem or "imagenet"
    if init == "imagenet" and stem != "imagenet":
        raise ValueError(f"init='imagenet' needs stem='imagenet' (ImageNet's 7x7 stride-2 conv1 "
                         f"filters fit no other), got stem={stem!r}")
    if init == "imagenet" and arch_width(arch) is not None:
        raise ValueError(f"init='imagenet' needs torchvision's own widths, got the narrowed "
                         f"{arch!r}: use {arch.partition(WIDTH_SEPARATOR)[0]!r}")
    model = _torchvision_network(arch)
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
    elif stem == "imagenet":
        model.conv1 = _replace_in_channels(model.conv1, in_channels)
    else:
        model.conv1 = _small_conv1(model.conv1, in_channels, stride=_SMALL_STEM_STRIDE[stem])
        model.maxpool = nn.Identity()

    width = model.fc.in_features
    model.fc = nn.Identity()
    if byol_state is not None:
        _load(model, byol_state, f"BYOL checkpoint {init.removeprefix('byol:')}")
    if num_classes:
        model.fc = nn.Linear(width, num_classes)
    model.feature_dim = width
    model.stem = stem
    return model


WIDTH_SEPARATOR = "-w"
"""Separates a torchvision ResNet's name from the width of its first stage: "resnet18-w32"."""


def arch_width(arch: str) -> int | None:
    """The first stage's width an `arch` name asks for ("resnet18-w32": 32), None for
    torchvision's own widths; ValueError for a width that is not a positive integer."""
    name, separator, width = arch.partition(WIDTH_SEPARATOR)
    if not separator:
        return None
    if not width.isdigit() or int(width) < 1:
        raise ValueError(f"arch {arch!r}: the width after {WIDTH_SEPARATOR!r} must be a positive "
                         f"integer, e.g. {name}{WIDTH_SEPARATOR}32")
    return int(width)


def _torchvision_network(arch: str) -> nn.Module:
    """torchvision's `arch`, randomly initialised; for a width (`arch_width`), the same ResNet
    with its stages rebuilt w, 2w, 4w and 8w wide.

    Written here because torchvision fixes a ResNet's stage widths at 64 to 512 (its
    `width_per_group` widens a Bottleneck's inside alone, and BasicBlock refuses it): the
    stages are rebuilt with torchvision's own blocks (`ResNet._make_layer`) and initialised as
    torchvision initialises a ResNet (He-normal convolutions, BatchNorm at 1 and 0).
    """
    width = arch_width(arch)
    model = torchvision.models.get_model(arch.partition(WIDTH_SEPARATOR)[0], weights=None)
    if width is None:
        return model
    if not isinstance(model, torchvision.models.ResNet):
        raise ValueError(f"arch {arch!r}: a width needs a torchvision ResNet")
    block = type(model.layer1[0])
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    for stage in range(4):
        name = f"layer{stage + 1}"
        setattr(model, name, model._make_layer(block, width * 2 ** stage,
                                               len(getattr(model, name)),
                                               stride=1 if stage == 0 else 2))
    model.fc = nn.Linear(model.inplanes, model.fc.out_features)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


def feature_dim(model: nn.Module) -> int:
    """Width of the features a `build_model` network feeds its head (2048 for resnet50)."""
    return int(model.feature_dim)


def model_stem(model: nn.Module) -> str:
    """The stem (one of `STEMS`) a `build_model` network was built with."""
    return str(model.stem)


def init_stem(init: str, stem: str) -> str:
    """The stem a network of `init` takes in a study whose own networks use `stem`: "imagenet"
    for init "imagenet" (its weights fit no other), the recorded one for a BYOL checkpoint
    (read from the file), else `stem`."""
    if init == "imagenet":
        return "imagenet"
    if init.startswith("byol:"):
        path = Path(init.removeprefix("byol:"))
        return _recorded_stem(_read_state_dict(path, "BYOL checkpoint", _BYOL_HINT))
    return stem


def _recorded_stem(checkpoint: dict) -> str:
    """The stem a BYOL checkpoint's encoder has: its config's, "imagenet" when older than it."""
    return (checkpoint.get("config") or {}).get("stem", "imagenet")


def _small_conv1(conv: nn.Conv2d, in_channels: int, stride: int) -> nn.Conv2d:
    """A freshly initialised 3x3 conv1 of `conv`'s width, reading `in_channels` (small stems)."""
    return nn.Conv2d(in_channels, conv.out_channels, kernel_size=3, stride=stride, padding=1,
                     bias=False)


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
        # torch.hub prints the download address before it tries: noise on an offline machine
        # (the error below says what to do), and on a connected one the cache fills quietly.
        with contextlib.redirect_stdout(io.StringIO()):
            return weights.get_state_dict(progress=False, check_hash=True)
    # OSError covers URLError (no network) and unreadable caches; RuntimeError a bad hash or file.
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise WeightsUnavailableError(
            f"Could not get {weights} ({err}). {_how_to_supply(arch)}"
        ) from err


_BYOL_HINT = "Run BYOL pretraining first, or pass the path of an existing checkpoint."


def _encoder_entry(checkpoint: dict, path: Path) -> dict[str, torch.Tensor]:
    """The encoder state dict of a BYOL checkpoint read from `path`."""
    if BYOL_ENCODER_KEY not in checkpoint:
        raise WeightsUnavailableError(
            f"BYOL checkpoint {path} has no {BYOL_ENCODER_KEY!r} entry (keys: "
            f"{sorted(checkpoint)[:10]}). {_BYOL_HINT}"
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


# --------------------------------------------------------------------------- self-describing export

EXPORT_WEIGHTS = "encoder.safetensors"
EXPORT_DESCRIPTION = "encoder.json"
EXPORT_CARD = "MODEL_CARD.md"
CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_DESCRIPTION = "model.json"
EXPORT_FORMAT = "rapid_utils.encoder/1"
"""Value of encoder.json's (and model.json's) `format`, and the key of its copy in the
safetensors header."""

# What an export describes and a checkpoint must therefore record (older ones lack `provenance`).
_REQUIRED_PROVENANCE = ("bands", "scale", "mean", "std", "split_fingerprint",
                        "band_stats_fingerprint")
_REQUIRED_CONFIG = ("arch", "image_size")


@dataclass(frozen=True)
class Normalisation:
    """What pretrained weights expect of their input: bands in order, the scale of stored values
    (stored value / scale = reflectance), per-band mean and std in stored units, the input size
    (px) and the ground sampling distance (m)."""

    bands: tuple[str, ...]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    gsd_m: float | None  # None: the imagery did not say (chips without a georeference)

    @classmethod
    def from_description(cls, description: dict) -> Normalisation:
        """The normalisation recorded in an encoder.json."""
        return cls(tuple(description["bands"]), description["scale"],
                   tuple(description["mean"]), tuple(description["std"]),
                   description["input_size"], description["gsd_m"])

    def describe(self) -> dict:
        """As recorded in an encoder.json, model.json and fine-tuning results file."""
        return {"bands": list(self.bands), "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "input_size": self.input_size, "gsd_m": self.gsd_m}

    def check(self, bands: Sequence[str], scale: float) -> None:
        """Raise ValueError, naming both, when data of `bands` (names, in order) and `scale`
        differ from what the weights expect."""
        problems = []
        if tuple(bands) != self.bands:
            problems.append(f"the data's bands are {tuple(bands)}, the weights expect "
                            f"{self.bands} (names and order)")
        if float(scale) != float(self.scale):
            problems.append(f"the data's scale is {scale:g}, the weights expect {self.scale:g} "
                            "(stored value / scale = reflectance)")
        if problems:
            raise ValueError(
                "data do not match the pretrained weights: " + "; ".join(problems) + ". Reorder "
                "the channels and rescale the values (value * weights' scale / data's scale) first"
            )

    def normalise(self, values: torch.Tensor, nodata: float | None = None) -> torch.Tensor:
        """(value - mean) / std per band of a (..., bands, H, W) tensor of stored values, as
        float32; pixels equal to `nodata` become 0 (the band mean), as in training."""
        if values.ndim < 3 or values.shape[-3] != len(self.bands):
            raise ValueError(f"expected a (..., {len(self.bands)}, H, W) tensor of the bands "
                             f"{self.bands}, got shape {tuple(values.shape)}")
        x = values.to(torch.float32)
        mean = torch.tensor(self.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float32)[:, None, None]
        return normalise(x, mean, std, None if nodata is None else x == nodata)


def _describe(path: Path, checkpoint: dict) -> dict:
    """encoder.json's content (less the weights' sha256) from a BYOL checkpoint at `path`."""
    provenance = checkpoint.get("provenance") or {}
    config = checkpoint.get("config") or {}
    missing = ([f"provenance.{key}" for key in _REQUIRED_PROVENANCE if key not in provenance]
               + [f"config.{key}" for key in _REQUIRED_CONFIG if key not in config])
    if missing:
        raise ValueError(
            f"BYOL checkpoint {path} lacks {', '.join(missing)}: it predates checkpoints that "
            "record their normalisation and split, so its weights cannot describe themselves. "
            "Move it aside and re-run the pretraining with the same parameters (a rerun beside "
            "it would resume it unchanged), then export the new checkpoint"
        )
    bands = list(provenance["bands"])
    if not len(provenance["mean"]) == len(provenance["std"]) == len(bands):
        raise ValueError(f"BYOL checkpoint {path}: {len(bands)} bands but "
                         f"{len(provenance['mean'])} means and {len(provenance['std'])} stds")
    history = checkpoint.get("history") or []
    return {
        "format": EXPORT_FORMAT,
        "arch": config["arch"],
        "in_channels": len(bands),
        "stem": _recorded_stem(checkpoint),
        "class_names": None,  # an encoder has no classifier head
        "bands": bands,
        "scale": provenance["scale"],
        "mean": [float(v) for v in provenance["mean"]],
        "std": [float(v) for v in provenance["std"]],
        "input_size": config["image_size"],
        # The checkpoint does not record it; Planet Fusion's pixel size is what the format assumes.
        "gsd_m": layout.PIXEL_SIZE_M,
        "split_fingerprint": provenance["split_fingerprint"],
        "band_stats_fingerprint": provenance["band_stats_fingerprint"],
        "pretraining_sites_fingerprint": provenance.get("pretraining_sites_fingerprint"),
        "corpus": provenance.get("corpus") or config.get("corpus"),
        "checkpoint_path": str(path),
        "checkpoint_sha256": file_sha256(path),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "pretraining": config,
        "last_epoch": history[-1] if history else None,
        "versions": versions(),  # of the exporting environment; checkpoints record none
    }


def _write_described(model: nn.Module, description: dict, out: Path, weights_name: str,
                     description_name: str) -> Path:
    """Write `model`'s weights as `out/weights_name` (safetensors, with a copy of the description
    in its header, for a weights file that travels alone) and the description, completed with
    the weights' name, feature width and sha256, as `out/description_name`; return its path."""
    description = description | {"weights": weights_name, "feature_dim": feature_dim(model)}
    tensors = {name: value.detach().cpu().contiguous() for name, value in
               model.state_dict().items()}
    with atomic_path(out / weights_name) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={
            "format": "pt", EXPORT_FORMAT: json.dumps(description)})
    description["weights_sha256"] = file_sha256(out / weights_name)
    write_json_atomic(out / description_name, description)
    return out / description_name


def export_encoder(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a BYOL checkpoint's encoder to `out_dir` as encoder.safetensors, encoder.json (its
    normalisation, input, provenance) and MODEL_CARD.md; return encoder.json's path.

    A checkpoint without `provenance` (older than it) is refused with a ValueError naming the
    missing fields.
    """
    path, out = Path(checkpoint), Path(out_dir)
    content = _read_state_dict(path, "BYOL checkpoint", _BYOL_HINT)
    state = _encoder_entry(content, path)
    description = _describe(path, content)
    model = build_model(description["arch"], description["in_channels"], 0,
                        stem=description["stem"])
    _load(model, state, f"BYOL checkpoint {path}")
    json_path = _write_described(model, description, out, EXPORT_WEIGHTS, EXPORT_DESCRIPTION)
    with atomic_path(out / EXPORT_CARD) as tmp:
        tmp.write_text(_model_card(json.loads(json_path.read_text())))
    return json_path


def save_classifier(model: nn.Module, out_dir: str | Path, arch: str,
                    class_names: Sequence[str], normalisation: Normalisation,
                    provenance: dict) -> Path:
    """Write a fine-tuned classifier to `out_dir` as model.safetensors and model.json (arch,
    stem (`model_stem`), class names, its input's `Normalisation`, `provenance`: split and
    statistics fingerprints, init checkpoint, results file, versions); return model.json's path.

    `load_pretrained(out_dir)` reads it back, head included.
    """
    description = {
        "format": EXPORT_FORMAT,
        "arch": arch,
        "in_channels": len(normalisation.bands),
        "stem": model_stem(model),
        "class_names": list(class_names),
        **normalisation.describe(),
        **provenance,
        "versions": versions(),
    }
    return _write_described(model, description, Path(out_dir), CLASSIFIER_WEIGHTS,
                            CLASSIFIER_DESCRIPTION)


def load_pretrained(path: str | Path) -> tuple[nn.Module, Normalisation]:
    """The model of an export folder (or its JSON), in eval mode, and its normalisation.

    An encoder export (`export_encoder`: encoder.json) gives ``build_model(arch, in_channels,
    0, stem=stem)`` (4-band conv1, `fc` = Identity; exports without `stem` are "imagenet"); a
    fine-tuned classifier (`save_classifier`: model.json) gives the network with its head, one
    output per entry of its `class_names`.
    Check your data with ``normalisation.check(bands, scale)`` and feed it
    ``normalisation.normalise(values)``.
    """
    path = Path(path)
    hint = ("Export a BYOL checkpoint with `rapid-utils export --checkpoint PATH --out DIR`, or "
            "point to a fine-tuned model's folder (runs/<profile>/models/<run>).")
    json_path = path
    if path.is_dir():
        found = [path / name for name in (EXPORT_DESCRIPTION, CLASSIFIER_DESCRIPTION)
                 if (path / name).is_file()]
        json_path = found[0] if found else path / EXPORT_DESCRIPTION
    if not json_path.is_file():
        raise WeightsUnavailableError(f"no {EXPORT_DESCRIPTION} or {CLASSIFIER_DESCRIPTION} at "
                                      f"{json_path}. {hint}")
    try:
        description = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsUnavailableError(f"cannot read {json_path} ({err}). {hint}") from err
    if not isinstance(description, dict) or description.get("format") != EXPORT_FORMAT:
        raise WeightsUnavailableError(f"{json_path} is not an encoder or model export (format "
                                      f"{EXPORT_FORMAT!r}). {hint}")
    weights = json_path.parent / description["weights"]
    if not weights.is_file():
        raise WeightsUnavailableError(f"{json_path} names weights {weights}, which are missing. "
                                      f"{hint}")
    if file_sha256(weights) != description["weights_sha256"]:
        raise WeightsUnavailableError(f"{weights} is not the file {json_path} describes (sha256 "
                                      f"differs): export again into one folder. {hint}")
    model = build_model(description["arch"], description["in_channels"],
                        len(description.get("class_names") or ()),
                        stem=description.get("stem", "imagenet"))
    _load(model, safetensors.torch.load_file(weights), f"model weights {weights}")
    return model.eval(), Normalisation.from_description(description)


def _plain_recipe(arch: str, stem: str, in_channels: int) -> str:
    """How to rebuild the encoder without `rapid_utils`, in words and code (model card)."""
    if arch_width(arch) is not None:
        return (f"a narrowed ResNet that torchvision does not build: `rapid_utils.models."
                f"build_model({arch!r}, {in_channels}, 0, stem={stem!r})`, then")
    if stem == "imagenet":
        conv1 = (f"conv1 replaced by `nn.Conv2d({in_channels}, 64, 7, stride=2, padding=3, "
                 "bias=False)` (torchvision's stem, max-pool kept)")
    else:
        conv1 = (f"conv1 replaced by `nn.Conv2d({in_channels}, 64, 3, "
                 f"stride={_SMALL_STEM_STRIDE[stem]}, padding=1, bias=False)` and maxpool by "
                 f"`nn.Identity()` (the {stem!r} stem)")
    return f"`torchvision.models.get_model({arch!r})`, {conv1}, fc by `nn.Identity()`, then"


def _model_card(d: dict) -> str:
    """MODEL_CARD.md of an export: what it is, how it was trained, its input, how to load it."""
    config, last = d["pretraining"], d["last_epoch"] or {}
    stem = d.get("stem", "imagenet")
    epochs = config.get("epochs")
    trained = (f"{d['checkpoint_epoch']} of {epochs} epochs"
               + (" (an interrupted run)" if d["checkpoint_epoch"] != epochs else ""))
    stats = "\n".join(f"| {band} | {mean:.2f} | {std:.2f} |"
                      for band, mean, std in zip(d["bands"], d["mean"], d["std"], strict=True))
    settings = "\n".join(f"| `{key}` | `{value}` |" for key, value in config.items())
    guards = ", ".join(f"{key} {last[key]:.4g}" for key in
                       ("loss", "knn_accuracy", "projection_std", "encoder_change") if key in last)
    caveats = (f"The checkpoint records its corpus: `{d['corpus']}`." if d["corpus"] else
               "The checkpoint does not record which corpus it was pretrained on. Unless it was "
               "pretrained on the real RapidAI4EO corpus, that is this compendium's embedded "
               "synthetic corpus: generated images, not Planet Fusion acquisitions, so the "
               "features say nothing yet about real imagery.")
    from rapid_utils.metrics import MIN_ENCODER_CHANGE  # sklearn: imported only when needed

    change = last.get("encoder_change")
    if change is not None and change < MIN_ENCODER_CHANGE:
        caveats += (f"\n- The encoder's weights moved only {100 * change:.2g} % from their "
                    "random initialisation in pretraining: its features are close to random ones.")
    return f"""# BYOL encoder: {d['arch']}, {d['in_channels']} bands

A torchvision `{d['arch']}` encoder (conv1 reading {d['in_channels']} bands, stem `{stem}`, `fc` =
Identity, no classifier head) pretrained with BYOL (Grill et al. 2020) by `rapid_utils`. It maps a
({d['in_channels']}, H, W) chip to a {d['feature_dim']}-dimensional feature vector. Exported from
`{d['checkpoint_path']}` (sha256 `{d['checkpoint_sha256']}`), {trained}.

## Input

Bands, in this order: {', '.join(d['bands'])}. Values as stored: reflectance x {d['scale']:g}
(stored value / scale = reflectance). Normalise each band as (value - mean) / std with the
statistics below (stored units); nodata pixels were set to 0 (the band mean) in training.
Input size {d['input_size']} px (the side of the BYOL training views); ground sampling distance
{d['gsd_m']:g} m (Planet Fusion's pixel size: the checkpoint does not record it).

| band | mean | std |
|---|---|---|
{stats}

## Training

BYOL, `positives={config.get('positives')}` ("augment": two views of one image; "temporal": two
dates of one site); last epoch: {guards or 'not recorded'}. Split fingerprint
`{d['split_fingerprint']}`, band statistics fingerprint `{d['band_stats_fingerprint']}`,
pretraining sites fingerprint `{d['pretraining_sites_fingerprint']}`.

| parameter | value |
|---|---|
{settings}

## Loading

```python
from rapid_utils.models import load_pretrained

model, normalisation = load_pretrained("{EXPORT_DESCRIPTION}")  # or this folder
normalisation.check(bands=your_bands, scale=your_scale)  # ValueError if they differ
features = model(normalisation.normalise(values))  # values: (N, {d['in_channels']}, H, W) stored
```

Without `rapid_utils`: {_plain_recipe(d['arch'], stem, d['in_channels'])}
`load_state_dict(safetensors.torch.load_file("{EXPORT_WEIGHTS}"))`; `{EXPORT_DESCRIPTION}`
holds the statistics above.

## Limitations

- {caveats}
- Only for data in these bands, in this order, at this scale, normalised with these statistics
  (`Normalisation.check` refuses other bands or scales).
- BatchNorm statistics are those of the pretraining data.
- Versions in `{EXPORT_DESCRIPTION}` are those of the exporting environment
  ({', '.join(f'{k} {v}' for k, v in d['versions'].items())}); the checkpoint records none.
"""
