"""Parameter profiles: `params/{name}.yaml`, read into one typed, validated `Profile`.

A profile is a flat mapping of settings. `Profile` names every setting a profile may hold,
with its type, its range and its default: what a profile without the key gets. `load_profile`
merges the profile's file with `--extra` files and refuses, naming the file, any unknown key
(with the nearest known one) and any value of the wrong type or out of range. The batch hands
`Profile.to_dict()` to the notebooks (`notebook_batch.plan_jobs`); each notebook's `parameters` cell
holds the `quick` profile's values, so a notebook run by hand is the quick study.
"""

from __future__ import annotations

import datetime as dt
import difflib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from rapid_utils import paths, results

REQUIRED_KEYS = ("corpus", "seed")


class ProfileError(ValueError):
    """A parameter profile that is missing, unreadable or has bad values."""


def _at_least(low: int | float, default: Any = MISSING) -> Any:
    """A setting (or each number of a list setting) of at least `low`."""
    return field(default=default, metadata={"at_least": low})


def _share(default: Any) -> Any:
    """A setting (or each number of a list setting) in (0, 1]."""
    return field(default=default, metadata={"share": True})


@dataclass(frozen=True)
class Profile:
    """Every setting of a study; lists are tuples, and `None` means "not given" where the
    setting's presence matters (the `chips_*` keys make the corpus a chips folder)."""

    # the corpus (the batch)
    corpus: str  # "synthetic", "example-chips", or a corpus folder
    seed: int = _at_least(0)  # corpus, split, label subsets (and `seeds`, `byol_seed` if empty)
    # BYOL pretraining and the random-init network it is read against (03, 04, 06); empty: `seed`
    byol_seed: int | None = _at_least(0, None)
    store: str = ""  # packed store read in place of the GeoTIFFs; "": the GeoTIFFs
    synth_sites: int = _at_least(1, 1000)
    synth_size: int = _at_least(8, 64)
    synth_dates: Literal["monthly", "all"] | tuple[str | dt.date, ...] = "monthly"
    synth_dtype: Literal["int16", "uint16"] = "int16"
    workers: int = _at_least(1, 2)  # processes generating (and packing) the embedded corpus
    example_chips_classes: int = _at_least(1, 10)
    example_chips_per_class: int = _at_least(1, 40)
    example_chips_unlabelled: int = _at_least(0, 100)
    example_chips_size: int = _at_least(8, 64)
    # a chips corpus: `chips_<field>` is the chips spec's <field> (corpus.chips checks them)
    chips_bands: tuple[int | str, ...] | None = None
    chips_scale: float | None = None
    chips_size: int | Literal[""] | None = None
    chips_resize: Literal["bilinear", "crop"] | None = None
    chips_labels_csv: str | None = None
    chips_unlabelled: object = None  # a folder, or a list of folders or {path, bands, scale}
    chips_class_map: str | dict | None = None
    chips_nodata: float | Literal[""] | None = None
    chips_normalisation: Literal["pooled", "per-source"] | None = None
    chips_pretrain_on_labelled_images: bool | Literal["none", "train", "all"] | None = None
    # the split and the exploration (notebooks 01, 02)
    split_by: Literal["site", "tile"] = "site"
    label_fractions: tuple[float, ...] = _share((0.01, 0.1, 1.0))
    stats_sites: int = _at_least(1, 256)
    n_grid_sites: int = _at_least(1, 5)
    hist_sites: int = _at_least(1, 32)
    phenology_sites: int = _at_least(1, 8)
    n_example_chips: int = _at_least(1, 4)
    qa_band: int | str = ""  # 1-based band number or description; "": no cloud masking
    qa_threshold: float = 1
    qa_max_days: int | Literal[""] = ""
    # BYOL pretraining (notebook 03; PretrainConfig)
    arch: str = "resnet18"
    # models.STEMS, for BYOL and the random and BYOL inits of 04 (imagenet keeps ImageNet's):
    # "imagenet" (32 px -> 8 x 8 after the stem), "small" (32 -> 32), "small-stride2" (-> 16)
    stem: Literal["imagenet", "small", "small-stride2"] = "imagenet"
    image_size: int = _at_least(8, 64)
    positives: Literal["augment", "temporal"] = "augment"
    colour_jitter: float = _at_least(0, 0.4)
    # the views' jitter per band (BYOL) or shared by all bands (band ratios kept), their blur
    # (False: none) and additive noise std in normalised units (augment.byol_view_configs)
    jitter_bands: Literal["per-band", "shared"] = "per-band"
    blur: bool = True
    view_noise: float = _at_least(0, 0.0)
    pretrain_epochs: int = _at_least(1, 10)
    pretrain_batch_size: int = _at_least(1, 64)
    base_lr: float = _at_least(0, 0.2)
    pretrain_weight_decay: float = _at_least(0, 1.5e-6)
    pretrain_optimizer: Literal["lars", "sgd"] = "lars"
    warmup_epochs: int = _at_least(0, 1)
    lars_trust: float = _at_least(0, 0.001)
    tau_base: float = _share(0.99)
    hidden_dim: int = _at_least(1, 4096)
    projection_dim: int = _at_least(1, 256)
    knn_sites: int = _at_least(1, 1000)
    knn_k: int = _at_least(1, 5)
    # fine-tuning (notebook 04, once per scenario and seed; FinetuneConfig)
    finetune_epochs: int = _at_least(1, 10)
    finetune_batch_size: int = _at_least(1, 64)
    lr: float = _at_least(0, 1e-3)
    finetune_weight_decay: float = _at_least(0, 1e-4)
    finetune_optimizer: Literal["adamw", "sgd"] = "adamw"
    min_samples_per_epoch: int = _at_least(0, 0)
    eval_dates: Literal["seasons", "all", "spread", "first"] = "seasons"
    test_every_epoch: bool = False
    seeds: tuple[int, ...] | None = None  # fine-tuning seeds; empty: `seed` alone
    scenarios: tuple[str, ...] = tuple(s.key for s in results.SCENARIOS)  # []: none (no 05)
    imagenet_weights_path: str = ""  # torchvision state dict; "": torchvision's cache
    num_workers: int = _at_least(0, 0)
    threads: int = _at_least(0, 0)  # torch threads per process; 0: the idle cores
    # the label-efficiency study (notebook 06)
    suite_encoders: tuple[str, ...] = ("byol", "random-init")
    suite_labels_per_class: tuple[int | Literal["all"], ...] = _at_least(1, (1, 5, 10, "all"))
    suite_repeats: int = _at_least(1, 10)
    suite_finetune_repeats: int = _at_least(0, 5)
    suite_finetune_encoders: tuple[str, ...] = ("byol", "random-init")
    suite_test_share: float = _share(0.5)
    suite_knn_k: tuple[int, ...] = _at_least(1, (5, 1))  # one kNN per k
    suite_bn_images: int = _at_least(0, 1024)  # pool images re-estimating BatchNorm; 0: none
    suite_eval_size: int | None = _at_least(8, None)  # networks' frozen features at this px
    suite_protocol: Literal["test", "validation"] = "test"  # validation: choose settings
    suite_max_items: int = _at_least(1, 20000)

    @property
    def pretraining_seed(self) -> int:
        """The seed of BYOL pretraining and of the random-init network: `byol_seed`, else
        `seed`. Another value is another pretraining run on the same split and subsets."""
        return self.seed if self.byol_seed is None else self.byol_seed

    @property
    def finetune_seeds(self) -> tuple[int, ...]:
        """The fine-tuning seeds: `seeds`, else `seed` alone."""
        return self.seeds or (self.seed,)

    @property
    def is_chips(self) -> bool:
        """True when `chips_*` keys describe the corpus as a chips folder."""
        return bool(self.chips_fields())

    def chips_fields(self) -> dict[str, Any]:
        """The chips spec's fields the profile gives (`chips_<field>` keys)."""
        return {f.name.removeprefix("chips_"): _plain(getattr(self, f.name))
                for f in fields(self) if f.name.startswith("chips_")
                and getattr(self, f.name) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Every setting by key, lists as lists (what the notebooks receive)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    return [_plain(item) for item in value] if isinstance(value, tuple) else value


def _describe(kind: Any) -> str:
    """A type annotation in words, for error messages."""
    if kind in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
    if kind is dt.date:
        return "a date"
    if kind is dict:
        return "a mapping"
    if kind is type(None):
        return "empty"
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin is Literal:
        return " or ".join(repr(a) for a in arguments)
    if origin is tuple:
        return f"a list, each {_describe(arguments[0])}"
    return " or ".join(_describe(a) for a in arguments)  # a union


def _matches(value: Any, kind: Any) -> bool:
    """Whether a YAML value has the annotated type (lists for tuples; an int is a float)."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if kind is object:
        return True
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is Literal:
        return value in arguments and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, list) and all(_matches(item, arguments[0]) for item in value)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, argument) for argument in arguments)
    return isinstance(value, kind)


def _numbers(value: Any) -> list[int | float]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, int | float) and not isinstance(item, bool)]


def _check(key: str, value: Any, kind: Any, metadata: typing.Mapping, source: Path) -> Any:
    """`value` as the Profile holds it (lists as tuples), or a `ProfileError`."""
    where = f"{source}: {key}: {value!r}"
    if not _matches(value, kind):
        raise ProfileError(f"{where} is not {_describe(kind)}")
    for number in _numbers(value):
        if "at_least" in metadata and number < metadata["at_least"]:
            raise ProfileError(f"{where}: must be at least {metadata['at_least']}")
        if metadata.get("share") and not 0 < number <= 1:
            raise ProfileError(f"{where}: must be above 0 and at most 1")
    if key == "scenarios":
        unknown = [item for item in value if item not in results.SCENARIO_BY_KEY]
        if unknown:
            raise ProfileError(f"{where}: unknown scenarios {unknown}; choose from "
                               f"{list(results.SCENARIO_BY_KEY)}")
    return tuple(value) if isinstance(value, list) and kind is not object else value


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        known = sorted(p.stem for p in paths.params_dir().glob("*.yaml"))
        raise ProfileError(f"no parameter file {path} (known profiles: {', '.join(known)})")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ProfileError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(content, dict):
        raise ProfileError(f"{path} must be a flat mapping of parameter: value")
    return content


def load_profile(name: str, extra_files: tuple[str | Path, ...] = ()) -> Profile:
    """`params/{name}.yaml`, updated by each extra YAML file in turn, checked key by key."""
    kinds = typing.get_type_hints(Profile)
    known = {f.name: f for f in fields(Profile)}
    checked: dict[str, Any] = {}
    for path in (paths.profile_path(name), *map(Path, extra_files)):
        for key, value in _read(path).items():
            if key not in known:
                nearest = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
                raise ProfileError(f"{path}: unknown key {key!r}{hint}")
            checked[key] = _check(key, value, kinds[key], known[key].metadata, path)
    missing = [key for key in REQUIRED_KEYS if key not in checked]
    if missing:
        raise ProfileError(f"profile {name!r} lacks {', '.join(missing)}")
    return Profile(**checked)
