"""Your own imagery: a folder of labelled multispectral GeoTIFF chips as a corpus.

A chips corpus is described by a small YAML file, the chips spec (`ChipsSpec`): where the
chips are, how they are labelled, which four bands are our Blue, Green, Red and NIR, how to
scale them and to what size. Labels come from one sub-folder per class
(`ROOT/<ClassName>/*.tif`, torchvision's ImageFolder convention) or from a CSV of
`path,label`; an optional folder of unlabelled chips feeds pretraining only. The class list
comes from the data, or from a class map into the poster's 7 classes.

Unlabelled chips may come from several folders (`ChipSource`), each read with its own bands
and scale, and normalised with its own band statistics when `normalisation` is "per-source":
Sentinel-2 L1C and L2A chips differ by up to a factor of three in blue, so one set of
statistics would put one processing level far from the other. Chips that are all zero or all
nodata carry no image; the index skips them, counts them and lists them (`ChipsIndex.skipped`).

Chips are single-date: a dataset item has no time axis, and BYOL's temporal positives are the
same chip twice (so the two views differ by augmentation only). Pixel values are converted
to the project's stored units, reflectance x 10000, so band statistics and figures read them
like Planet Fusion chips.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import torch
import torchvision.transforms.v2.functional as TF
import yaml
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from tqdm.auto import tqdm

from rapid_utils import labels, splits
from rapid_utils.bandstats import BandStats, PixelSums
from rapid_utils.corpus import layout
from rapid_utils.corpus.reader import BandCountError, CorpusError, RasterReadError
from rapid_utils.io import atomic_path

log = logging.getLogger(__name__)

SPEC_FILE = "chips.yaml"  # a folder holding this file is a chips corpus
KIND = "chips"
CHIP_SUFFIXES = (".tif", ".tiff")
RESIZE_METHODS = ("bilinear", "crop")
UNLABELLED = -1  # the label of unlabelled chips (pretraining only)
NORMALISATIONS = ("pooled", "per-source")
LABELLED_SOURCE = ""  # the `source` of the labelled chips (under `root`)


class ChipsError(CorpusError):
    """A chips corpus or spec that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class ChipSource:
    """A folder of unlabelled chips (pretraining only); `bands` and `scale` default to the
    spec's, for folders that store the four bands differently from the labelled chips."""

    path: Path
    bands: tuple[int | str, ...] | None = None
    scale: float | None = None

    @property
    def name(self) -> str:
        """The source's name in the index (`source` column) and in its chips' sample ids."""
        return self.path.name

    def as_yaml(self) -> dict:
        """The source as written in a chips spec."""
        return {"path": str(self.path), "bands": list(self.bands) if self.bands else None,
                "scale": self.scale}


@dataclass(frozen=True)
class ChipsSpec:
    """How to read a folder of chips; written and read as a YAML file (`save`, `load_spec`)."""

    root: Path  # the chips folder
    bands: tuple[int | str, ...]  # Blue, Green, Red, NIR: 1-based band index or description
    scale: float = 10000.0  # stored value / scale = surface reflectance
    size: int | None = None  # side of the chips fed to the model; None: keep (all equal)
    resize: str = "bilinear"  # "bilinear" (resample) or "crop" (centre crop) to `size`
    labels_csv: Path | None = None  # CSV with `path,label`; None: one sub-folder per class
    unlabelled: tuple[ChipSource, ...] = ()  # folders of unlabelled chips, for pretraining only
    class_map: dict[str, str] = field(default_factory=dict)  # data class -> poster class
    nodata: float | None = None  # stored value marking missing pixels (else the file's tag)
    normalisation: str = "pooled"  # "pooled": one mean/std for all; "per-source": one a folder
    # labelled chips' images (never labels) that pretraining sees: "train" (the training
    # chips), "all" (validation and test chips too: transductive), "none" (no labelled chip)
    pretrain_on_labelled_images: str = "train"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pretrain_on_labelled_images", _labelled_images_value(
            self.pretrain_on_labelled_images, "chips spec"))
        if len(self.bands) != len(layout.BANDS):
            raise ChipsError(
                f"bands must name {len(layout.BANDS)} bands, for {', '.join(layout.BANDS)} in "
                f"that order (e.g. [2, 3, 4, 8] or [B02, B03, B04, B08]); got {list(self.bands)}"
            )
        for band in self.bands:
            if isinstance(band, bool) or not isinstance(band, int | str) or (
                    isinstance(band, int) and band < 1):
                raise ChipsError(f"band {band!r}: use a 1-based band index or a band description")
        if not self.scale > 0:
            raise ChipsError(f"scale must be positive (stored value / scale = reflectance), "
                             f"got {self.scale}")
        if self.size is not None and not 8 <= self.size <= 2048:
            raise ChipsError(f"size must be between 8 and 2048 px (or empty), got {self.size}")
        if self.resize not in RESIZE_METHODS:
            raise ChipsError(f"resize must be one of {RESIZE_METHODS}, got {self.resize!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ChipsError(f"normalisation must be one of {NORMALISATIONS}, got "
                             f"{self.normalisation!r}")
        names = [source.name for source in self.unlabelled]
        if len(set(names)) != len(names):
            raise ChipsError(f"unlabelled folders need distinct names (the folder name names "
                             f"the source), got {names}")
        unknown = sorted(set(self.class_map.values()) - set(labels.CLASSES))
        if unknown:
            raise ChipsError(f"class map targets {unknown} are not poster classes; use "
                             f"{', '.join(labels.CLASSES)}")

    def source(self, name: str) -> ChipSource:
        """The unlabelled source called `name`, or the labelled chips' for LABELLED_SOURCE."""
        if name == LABELLED_SOURCE:
            return ChipSource(self.root, self.bands, self.scale)
        for source in self.unlabelled:
            if source.name == name:
                return source
        raise ChipsError(f"no chips source {name!r} in the spec of {self.root}")

    def save(self, path: str | Path) -> Path:
        """Write the spec as YAML (paths absolute), atomically; return the path."""
        content = {
            "kind": KIND, "root": str(self.root), "bands": list(self.bands), "scale": self.scale,
            "size": self.size, "resize": self.resize,
            "labels_csv": str(self.labels_csv) if self.labels_csv else None,
            "unlabelled": [source.as_yaml() for source in self.unlabelled],
            "class_map": dict(self.class_map), "nodata": self.nodata,
            "normalisation": self.normalisation,
            "pretrain_on_labelled_images": self.pretrain_on_labelled_images,
        }
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(content, sort_keys=False))
        return Path(path)


def spec_path(corpus: str | Path) -> Path | None:
    """The chips spec of `corpus` (a spec YAML file, or a folder holding chips.yaml), or None."""
    corpus = Path(corpus)
    if corpus.is_file() and corpus.suffix in (".yaml", ".yml"):
        return corpus
    if corpus.is_dir() and (corpus / SPEC_FILE).is_file():
        return corpus / SPEC_FILE
    return None


def is_chips_corpus(corpus: str | Path) -> bool:
    """True when `corpus` is a chips spec file or a folder holding one."""
    return spec_path(corpus) is not None


def _path_or_none(value: object, base: Path) -> Path | None:
    if value in (None, ""):
        return None
    return (base / Path(str(value)).expanduser()).resolve()


def read_class_map(value: object, base: Path) -> dict[str, str]:
    """A class map given inline (a mapping) or as the path of a YAML mapping file."""
    if value in (None, "", {}):
        return {}
    if isinstance(value, str):
        path = _path_or_none(value, base)
        if not path.is_file():
            raise ChipsError(f"no class map file {path}: give a YAML file of "
                             "`DataClass: poster_class` lines, or leave class_map empty")
        value = yaml.safe_load(path.read_text())
    if not isinstance(value, dict):
        raise ChipsError(f"the class map must be a mapping of data class -> poster class, "
                         f"got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def _sources(value: object, base: Path, where: str) -> tuple[ChipSource, ...]:
    """Unlabelled sources given as a folder, or a list of folders or {path, bands, scale}."""
    if value in (None, "", []):
        return ()
    items = value if isinstance(value, list) else [value]
    sources = []
    for item in items:
        entry = item if isinstance(item, dict) else {"path": item}
        unknown = sorted(set(entry) - {"path", "bands", "scale"})
        if unknown or not entry.get("path"):
            raise ChipsError(f"{where}: each unlabelled source is a folder, or a mapping with "
                             f"`path` and optional `bands` and `scale`; got {item!r}")
        sources.append(ChipSource(
            _path_or_none(entry["path"], base),
            tuple(entry["bands"]) if entry.get("bands") else None,
            float(entry["scale"]) if entry.get("scale") else None,
        ))
    return tuple(sources)


def spec_from_values(values: dict, base: Path, source: str = "chips spec") -> ChipsSpec:
    """A spec from a mapping of its fields; relative paths are resolved from `base`."""
    known = {"kind", "root", "bands", "scale", "size", "resize", "labels_csv", "unlabelled",
             "class_map", "nodata", "normalisation", "pretrain_on_labelled_images"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ChipsError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
    if "root" not in values or "bands" not in values:
        raise ChipsError(f"{source} needs `root` (the chips folder) and `bands` (four bands "
                         "for Blue, Green, Red, NIR)")
    size = values.get("size")
    return ChipsSpec(
        root=_path_or_none(values["root"], base),
        bands=tuple(values["bands"] or ()),
        scale=float(values.get("scale") or 10000.0),
        size=None if size in (None, "", 0) else int(size),
        resize=str(values.get("resize") or "bilinear"),
        labels_csv=_path_or_none(values.get("labels_csv"), base),
        unlabelled=_sources(values.get("unlabelled"), base, source),
        class_map=read_class_map(values.get("class_map"), base),
        nodata=None if values.get("nodata") in (None, "") else float(values["nodata"]),
        normalisation=str(values.get("normalisation") or "pooled"),
        pretrain_on_labelled_images=_labelled_images_value(
            values.get("pretrain_on_labelled_images"), source),
    )


LABELLED_IMAGES = ("none", "train", "all")  # pretrain_on_labelled_images values
_RECIPE_NAME = {"train": False, "all": True}  # as statistics recipes wrote them before "none"


def _labelled_images_value(value: object, source: str) -> str:
    """`pretrain_on_labelled_images` as one of `LABELLED_IMAGES`; true/false (older specs)
    read as "all"/"train"."""
    if value is None or value == "":
        return "train"
    if isinstance(value, bool):
        return "all" if value else "train"
    if value not in LABELLED_IMAGES:
        raise ChipsError(f"{source}: pretrain_on_labelled_images must be one of "
                         f"{list(LABELLED_IMAGES)} (or true/false), got {value!r}")
    return str(value)


def load_spec(corpus: str | Path) -> ChipsSpec:
    """Read the chips spec of `corpus`; relative paths in it are relative to the spec file."""
    path = spec_path(corpus)
    if path is None:
        raise ChipsError(f"{corpus} is not a chips corpus: give a chips spec YAML file or a "
                         f"folder holding {SPEC_FILE}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ChipsError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(values, dict) or values.get("kind", KIND) != KIND:
        raise ChipsError(f"{path} is not a chips spec (expected a mapping with kind: {KIND})")
    return spec_from_values(values, path.parent, str(path))


# --------------------------------------------------------------------------- index


def _chip_files(folder: Path) -> list[Path]:
    """The chips of a folder (recursively), refusing files that are not GeoTIFFs."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    foreign = [p for p in files if p.suffix.lower() not in CHIP_SUFFIXES]
    if foreign:
        raise ChipsError(
            f"{foreign[0]} is not a GeoTIFF chip ({len(foreign)} such file(s) under {folder}); "
            "chips must be rasters saved as .tif: convert them (e.g. gdal_translate) or move "
            "other files out of the chips folder"
        )
    return files


def _labelled_from_folders(spec: ChipsSpec) -> pd.DataFrame:
    folders = sorted(
        p for p in spec.root.iterdir()
        if p.is_dir() and not p.name.startswith(".")
        and p.resolve() not in {source.path for source in spec.unlabelled}
    )
    if not folders:
        raise ChipsError(f"{spec.root} has no class folders: expected ROOT/<ClassName>/*.tif, "
                         "or set labels_csv to a CSV of path,label")
    rows = []
    for folder in folders:
        files = _chip_files(folder)
        if not files:
            raise ChipsError(f"class folder {folder} holds no chips: add .tif chips to it or "
                             "remove the folder")
        rows += [(path, folder.name) for path in files]
    return pd.DataFrame(rows, columns=["path", "source_class"])


def _labelled_from_csv(spec: ChipsSpec) -> pd.DataFrame:
    csv = spec.labels_csv
    if not csv.is_file():
        raise ChipsError(f"no labels CSV at {csv}: fix labels_csv, or leave it empty to label "
                         "chips by their class folder")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ChipsError(f"{csv} lacks the column(s) {sorted(missing)}: expected a header "
                         f"`path,label`, found {list(table.columns)}")
    blank = table["label"].str.strip() == ""
    if blank.any():
        rows = [int(i) + 2 for i in np.flatnonzero(blank)]  # 1-based, after the header line
        raise ChipsError(
            f"{csv}: {len(rows)} row(s) without a label (lines {rows[:5]}"
            f"{'...' if len(rows) > 5 else ''}, e.g. {table['path'][blank].iloc[0]}): give "
            "every row a label, or move unlabelled chips to the `unlabelled` folder"
        )
    paths = [(spec.root / p.strip()).resolve() for p in table["path"]]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise ChipsError(f"{csv} lists {len(absent)} chip(s) that do not exist, e.g. "
                         f"{absent[0]}; paths are relative to the chips folder {spec.root}")
    foreign = [p for p in paths if p.suffix.lower() not in CHIP_SUFFIXES]
    if foreign:
        raise ChipsError(f"{foreign[0]} (in {csv}) is not a GeoTIFF chip; chips must be .tif")
    return pd.DataFrame({"path": paths, "source_class": table["label"].str.strip()})


def resolve_bands(src: rasterio.DatasetReader, bands: Sequence[int | str], path: Path
                  ) -> list[int]:
    """1-based band indexes of `bands` (indexes or descriptions) in an open raster."""
    descriptions = [str(d).strip().lower() if d else "" for d in src.descriptions]
    indexes = []
    for band in bands:
        if isinstance(band, int):
            if band > src.count:
                raise BandCountError(
                    f"{path} has {src.count} bands, fewer than band {band} asked for "
                    f"(bands {list(bands)}): check the chips' band count or the `bands` setting"
                )
            indexes.append(band)
        elif band.strip().lower() in descriptions:
            indexes.append(descriptions.index(band.strip().lower()) + 1)
        else:
            shown = ", ".join(d or "(none)" for d in descriptions)
            raise BandCountError(
                f"{path} has no band described {band!r} (its descriptions: {shown}); give "
                "`bands` as 1-based indexes instead, e.g. [2, 3, 4, 8] for Sentinel-2 "
                "B02, B03, B04, B08 in EuroSAT's band order"
            )
    return indexes


def _inspect_chip(path: Path, source: str, spec: ChipsSpec) -> tuple[int, int, bool]:
    """Read a chip once, check its bands; return (height, width, has an image).

    A chip whose four bands are all zero or all nodata has no image (an empty tile of a
    scene's edge, a failed export): it is skipped, so pretraining never learns from it.
    """
    chip = read_chip(path, spec, source)
    empty = bool(np.ma.getmaskarray(chip).all() or not np.any(chip.filled(0)))
    return chip.shape[1], chip.shape[2], not empty


def _check_sizes(table: pd.DataFrame, spec: ChipsSpec) -> None:
    sizes = table.groupby(["height", "width"])["path"]
    if spec.size is None and sizes.ngroups > 1:
        found = "; ".join(f"{h}x{w} px: {len(g)} chips, e.g. {g.iloc[0]}" for (h, w), g in sizes)
        raise ChipsError(f"chips have different sizes ({found}); set `size` (profile key "
                         "chips_size) to resize or crop them all to one size")
    if spec.size is not None and spec.resize == "crop":
        small = table[(table["height"] < spec.size) | (table["width"] < spec.size)]
        if len(small):
            row = small.iloc[0]
            raise ChipsError(
                f"{row['path']} is {row['height']}x{row['width']} px, smaller than size "
                f"{spec.size} to centre-crop ({len(small)} such chips): use resize: bilinear "
                "or a smaller size"
            )


def _sample_id(path: Path, source: str, spec: ChipsSpec) -> str:
    """The chip's path relative to the chips folder, else `<source name>:<path in source>`."""
    if path.is_relative_to(spec.root):
        return path.relative_to(spec.root).as_posix()
    return f"{source}:{path.relative_to(spec.source(source).path).as_posix()}"


def class_list(source_classes: Sequence[str], class_map: dict[str, str]) -> tuple[str, ...]:
    """The study's classes: the data's own (sorted), or the poster classes mapped to."""
    if not class_map:
        return tuple(sorted(set(source_classes)))
    unmapped = sorted(set(source_classes) - set(class_map))
    if unmapped:
        raise ChipsError(f"classes {unmapped} are missing from the class map: map every class "
                         f"of the data to one of {', '.join(labels.CLASSES)}")
    used = set(class_map[c] for c in source_classes)
    return tuple(name for name in labels.CLASSES if name in used)


@dataclass(frozen=True)
class ChipsIndex:
    """The chips of a corpus: labelled, unlabelled, the class names, and the skipped chips."""

    labelled: pd.DataFrame
    unlabelled: pd.DataFrame
    classes: tuple[str, ...]
    skipped: pd.DataFrame  # path, source, reason: chips without an image (never trained on)


def build_chips_index(spec: ChipsSpec, progress: bool = True) -> ChipsIndex:
    """The labelled and unlabelled chips of a chips corpus, with its class names.

    Each row: sample_id (path relative to the chips folder, or `<source>:<path>` for an
    unlabelled folder elsewhere), path, source (LABELLED_SOURCE or the unlabelled folder's
    name), source_class (the data's label), label (class index; -1 unlabelled), label_name,
    height, width. Every chip is read once here, so a bad file stops the study now, not hours
    into training; chips that are all zero or all nodata are skipped, logged and listed.
    """
    if not spec.root.is_dir():
        raise ChipsError(f"no chips folder at {spec.root}: fix `root` in the chips spec")
    labelled = _labelled_from_csv(spec) if spec.labels_csv else _labelled_from_folders(spec)
    parts = [labelled.assign(labelled=True, source=LABELLED_SOURCE)]
    for source in spec.unlabelled:
        if not source.path.is_dir():
            raise ChipsError(f"no unlabelled chips folder at {source.path}: fix `unlabelled` "
                             "or leave it empty")
        parts.append(pd.DataFrame({"path": _chip_files(source.path), "source_class": "",
                                   "labelled": False, "source": source.name}))
    table = pd.concat(parts, ignore_index=True)
    if table.empty:
        raise ChipsError(f"no chips found under {spec.root}")
    inspected = [_inspect_chip(Path(path), name, spec) for path, name in tqdm(
        zip(table["path"], table["source"], strict=True), total=len(table),
        desc="checking chips", unit="chip", disable=not progress)]
    table[["height", "width", "has_image"]] = pd.DataFrame(inspected, index=table.index)
    skipped = table.loc[~table["has_image"], ["path", "source"]].assign(
        reason="all pixels zero or nodata").astype({"path": str})
    if len(skipped):
        log.warning("skipped %d chip(s) that are all zero or nodata (never trained on), e.g. "
                    "%s", len(skipped), ", ".join(skipped["path"].head(3)))
    table = table[table["has_image"]].astype({"height": "int64", "width": "int64"})
    _check_sizes(table, spec)
    classes = class_list(labelled["source_class"].tolist(), spec.class_map)
    mapped = table["source_class"].map(spec.class_map) if spec.class_map else table[
        "source_class"]
    table["label_name"] = mapped.where(table["labelled"], "")
    number = {name: k for k, name in enumerate(classes)}
    table["label"] = table["label_name"].map(number).fillna(UNLABELLED).astype("int64")
    table["sample_id"] = [_sample_id(Path(path), name, spec)
                          for path, name in zip(table["path"], table["source"], strict=True)]
    table["path"] = table["path"].astype(str)
    columns = ["sample_id", "path", "source", "source_class", "label", "label_name", "height",
               "width"]
    return ChipsIndex(table.loc[table["labelled"], columns].reset_index(drop=True),
                      table.loc[~table["labelled"], columns].reset_index(drop=True), classes,
                      skipped.reset_index(drop=True))


# --------------------------------------------------------------------------- reading


def sources_of(chips: pd.DataFrame) -> list[str]:
    """Each chip's source; an index without that column holds labelled chips only."""
    return chips["source"].tolist() if "source" in chips else [LABELLED_SOURCE] * len(chips)


def read_chip(path: str | Path, spec: ChipsSpec, source: str = LABELLED_SOURCE
              ) -> np.ma.MaskedArray:
    """The four bands of a chip in stored units (reflectance x 10000), float32, masked nodata.

    `source` names the unlabelled folder the chip comes from, for its own bands and scale.
    """
    path = Path(path)
    origin = spec.source(source)
    bands, scale = origin.bands or spec.bands, origin.scale or spec.scale
    try:
        with warnings.catch_warnings():  # chips need no georeference (challenge sets have none)
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = src.read(resolve_bands(src, bands, path), masked=True)
    except RasterioError as error:
        raise RasterReadError(
            f"cannot read {path} as a raster ({error}); it is corrupt or not an image: replace "
            "or remove it"
        ) from error
    mask = np.ma.getmaskarray(data)
    if spec.nodata is not None:
        mask = mask | (data.data == spec.nodata)
    values = data.data.astype(np.float32) * np.float32(layout.REFLECTANCE_SCALE / scale)
    return np.ma.MaskedArray(values, mask=mask | np.isnan(values))


def to_size(image: torch.Tensor, spec: ChipsSpec) -> torch.Tensor:
    """A (C, H, W) chip resampled (antialiased bilinear) or centre-cropped to `spec.size`."""
    if spec.size is None or image.shape[-2:] == (spec.size, spec.size):
        return image
    if spec.resize == "crop":
        return TF.center_crop(image, [spec.size, spec.size])
    return TF.resize(image, [spec.size, spec.size], antialias=True)


def chip_gsd_m(path: str | Path, spec: ChipsSpec) -> float | None:
    """Ground sampling distance (m) of a chip as the model sees it: its pixel size, times the
    resampling to `spec.size`; None when the chip has no projected georeference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.crs is None or not src.crs.is_projected:
                return None
            pixel, width = abs(src.res[0]) * src.crs.linear_units_factor[1], src.width
    if spec.size is not None and spec.resize == "bilinear":
        pixel *= width / spec.size
    return float(pixel)


def compute_band_stats(spec: ChipsSpec, chips: pd.DataFrame, n_chips: int = 256, seed: int = 0,
                       progress: bool = False, split_fingerprint: str = "") -> BandStats:
    """Per-band mean/std (stored units) over valid pixels of a seeded sample of `chips`.

    Pass training and unlabelled chips only, so validation and test chips do not leak into
    normalisation, and the fingerprint of their split. Pixels are counted before resizing.
    """
    rng = np.random.default_rng(seed)
    ordered = chips.sort_values("sample_id")
    pick = rng.permutation(len(ordered))[:n_chips]
    chosen = list(zip(ordered["path"].to_numpy()[pick], np.asarray(sources_of(ordered))[pick],
                      strict=True))
    sums = PixelSums()
    for path, source in tqdm(chosen, desc="band statistics", unit="chip", disable=not progress):
        sums.add(read_chip(path, spec, source))
    if not sums.count.all():
        raise ChipsError(f"no valid pixels in {len(chosen)} sampled chips of {spec.root} to "
                         "compute band statistics from: check `nodata` and `bands`")
    mean, std = sums.mean_std()
    return BandStats(tuple(mean.tolist()), tuple(std.tolist()), len(chosen), int(sums.count[0]),
                     split_fingerprint)


def band_stats_recipe(spec: ChipsSpec, n_chips: int, seed: int) -> str:
    """How `study_band_stats` draws its sample: normalisation, unlabelled sources, size, seed."""
    sources = ",".join(sorted(source.name for source in spec.unlabelled)) or "none"
    images = _RECIPE_NAME.get(spec.pretrain_on_labelled_images, spec.pretrain_on_labelled_images)
    return (f"chips {spec.normalisation} unlabelled={sources} labelled_images={images} "
            f"n_chips={n_chips} seed={seed}")


def study_band_stats(spec: ChipsSpec, labelled: pd.DataFrame, split: pd.Series,
                     unlabelled: pd.DataFrame, n_chips: int = 256, seed: int = 0
                     ) -> BandStats:
    """The normalisation of a chips study, as its spec's `normalisation` says.

    "pooled": one mean/std over `n_chips` of the training and unlabelled chips together.
    "per-source": the labelled chips' own from their training part, and each unlabelled
    folder's from `n_chips` of its chips (`BandStats.per_source`). No validation or test
    pixel enters either.
    """
    fingerprint = splits.fingerprint(labelled, split)
    train = labelled[split == "train"]
    per_source = {}
    if spec.normalisation == "pooled":
        stats = compute_band_stats(spec, pd.concat([train, unlabelled], ignore_index=True),
                                   n_chips, seed)
    else:
        stats = compute_band_stats(spec, train, n_chips, seed)
        for name, chips in unlabelled.groupby("source"):
            own = compute_band_stats(spec, chips, n_chips, seed)
            per_source[name] = (own.mean, own.std)
    return BandStats(stats.mean, stats.std, stats.n_sites, stats.n_pixels, fingerprint,
                     per_source, band_stats_recipe(spec, n_chips, seed))


def sample_band_values(spec: ChipsSpec, chips: pd.DataFrame, n_chips: int = 32,
                       pixels_per_chip: int = 500, seed: int = 0) -> dict[str, np.ndarray]:
    """Reflectance (0-1) of random valid pixels of a seeded sample of chips, per band."""
    rng = np.random.default_rng(seed)
    ordered = chips.sort_values("sample_id")
    pick = rng.permutation(len(ordered))[:n_chips]
    values: dict[str, list[np.ndarray]] = {band: [] for band in layout.BANDS}
    for path, source in zip(ordered["path"].to_numpy()[pick],
                            np.asarray(sources_of(ordered))[pick], strict=True):
        chip = read_chip(path, spec, source)
        valid = np.flatnonzero(~np.ma.getmaskarray(chip).any(axis=0))
        pick = rng.choice(valid, min(pixels_per_chip, len(valid)), replace=False)
        for k, band in enumerate(layout.BANDS):
            values[band].append(chip.data[k].ravel()[pick] / layout.REFLECTANCE_SCALE)
    return {band: np.concatenate(v) if v else np.array([]) for band, v in values.items()}


def example_chips(spec: ChipsSpec, index: pd.DataFrame, per_class: int = 4, seed: int = 0,
                  class_names: Sequence[str] = ()) -> dict[str, list[np.ndarray]]:
    """Class name -> up to `per_class` chips as reflectance (4, S, S) at the model's size."""
    rng = np.random.default_rng(seed)
    examples = {}
    for k, name in enumerate(class_names):
        members = index[index["label"] == k].sort_values("sample_id")
        chosen = members["path"].to_numpy()[rng.permutation(len(members))[:per_class]]
        examples[name] = [
            to_size(torch.from_numpy(read_chip(p, spec).filled(np.nan)), spec).numpy()
            / layout.REFLECTANCE_SCALE for p in chosen
        ]
    return examples
