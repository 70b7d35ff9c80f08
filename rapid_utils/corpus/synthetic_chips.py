"""An example chips folder in EuroSAT's multispectral format, generated (EuroSAT itself cannot
be downloaded here): the data behind `params/chips-example.yaml` and the chips tests.

`ROOT/<ClassName>/<ClassName>_<n>.tif`: 13-band uint16 GeoTIFFs (Sentinel-2 reflectance
x 10000, band descriptions B01 ... B12, B8A in EuroSAT's band order), 64 x 64 px at 10 m,
plus `ROOT/unlabelled/chip_<n>.tif` for pretraining. Each class mixes two materials (water,
vegetation, soil, built-up) in its own spatial pattern (stripes of fields, tree crowns, a
road or river across, a street grid...), with per-chip brightness and sensor noise, so the
classes can be learnt but not from one pixel alone. Not a model of EuroSAT: a stand-in with
its format, for testing the pipeline.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage
from tqdm.auto import tqdm

from rapid_utils.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

MARKER = ".example-chips.json"
# EuroSAT MS band order (B8A last); Blue, Green, Red, NIR are bands 2, 3, 4 and 8.
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
            "B12", "B8A")
# Surface reflectance spectra of the materials, in S2_BANDS order.
MATERIALS: dict[str, tuple[float, ...]] = {
    "water": (0.06, 0.05, 0.04, 0.025, 0.02, 0.015, 0.012, 0.01, 0.008, 0.002, 0.006, 0.004,
              0.01),
    "vegetation": (0.03, 0.035, 0.06, 0.035, 0.09, 0.24, 0.30, 0.33, 0.12, 0.004, 0.17, 0.08,
                   0.34),
    "dry_vegetation": (0.05, 0.06, 0.08, 0.08, 0.12, 0.18, 0.21, 0.23, 0.10, 0.004, 0.25, 0.16,
                       0.24),
    "soil": (0.08, 0.09, 0.12, 0.16, 0.19, 0.21, 0.23, 0.24, 0.10, 0.006, 0.32, 0.27, 0.25),
    "built": (0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20, 0.21, 0.08, 0.006, 0.24, 0.22, 0.21),
    "dark_forest": (0.02, 0.025, 0.04, 0.022, 0.06, 0.17, 0.21, 0.24, 0.09, 0.003, 0.11, 0.05,
                    0.25),
}
# EuroSAT's 10 classes: (material where the pattern is 1, material where it is 0, pattern).
CLASSES: dict[str, tuple[str, str, str]] = {
    "AnnualCrop": ("vegetation", "soil", "stripes"),
    "Forest": ("dark_forest", "vegetation", "crowns"),
    "HerbaceousVegetation": ("dry_vegetation", "vegetation", "blobs"),
    "Highway": ("built", "vegetation", "line"),
    "Industrial": ("built", "soil", "blocks"),
    "Pasture": ("vegetation", "dry_vegetation", "smooth"),
    "PermanentCrop": ("vegetation", "soil", "rows"),
    "Residential": ("built", "vegetation", "grid"),
    "River": ("water", "vegetation", "line"),
    "SeaLake": ("water", "water", "smooth"),
}


def _pattern(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) field in [0, 1] telling where the first material lies."""
    y, x = np.mgrid[0:size, 0:size] / size - 0.5  # centred: lines cross the middle
    angle = rng.uniform(0, np.pi)
    along = np.cos(angle) * x + np.sin(angle) * y
    across = -np.sin(angle) * x + np.cos(angle) * y
    if kind == "stripes":  # fields of alternating crop and bare soil
        return (np.sin(2 * np.pi * rng.uniform(2, 4) * along + rng.uniform(0, 6)) > 0) * 1.0
    if kind == "rows":  # orchard rows: narrow vegetation lines
        return (np.sin(2 * np.pi * rng.uniform(8, 12) * along) > 0.3) * 1.0
    if kind == "line":  # a road or river across the chip
        return (np.abs(across - rng.uniform(-0.2, 0.2)) < rng.uniform(0.04, 0.1)) * 1.0
    if kind == "grid":  # a street grid with houses and gardens
        period = rng.uniform(5, 8)
        return ((np.sin(2 * np.pi * period * along) > 0.2)
                | (np.sin(2 * np.pi * period * across) > 0.2)) * 1.0
    if kind == "blocks":  # large roofs
        noise = ndimage.zoom(rng.random((4, 4)), size / 4, order=0)[:size, :size]
        return (noise > 0.35) * 1.0
    sigma = {"crowns": 1.0, "blobs": 4.0, "smooth": 10.0}[kind]
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma, mode="wrap")
    return np.clip(0.5 + field / (4 * field.std() + 1e-9), 0, 1)


def _chip(class_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One chip as uint16 reflectance x 10000, (13, size, size)."""
    first, second, kind = CLASSES[class_name]
    where = _pattern(kind, size, rng)[None]
    spectrum = (np.asarray(MATERIALS[first])[:, None, None] * where
                + np.asarray(MATERIALS[second])[:, None, None] * (1 - where))
    image = spectrum * rng.uniform(0.8, 1.2) * (1 + rng.normal(0, 0.03, spectrum.shape))
    return np.clip(np.rint(image * 10000), 1, 65535).astype(np.uint16)


def _write(path: Path, chip: np.ndarray, rng: np.random.Generator) -> None:
    # A plausible UTM position (zone 32N, 10 m pixels), as Sentinel-2 chips carry one.
    transform = from_origin(rng.uniform(3e5, 7e5), rng.uniform(5.0e6, 6.0e6), 10.0, 10.0)
    with atomic_path(path) as tmp, rasterio.open(
        tmp, "w", driver="GTiff", width=chip.shape[2], height=chip.shape[1], count=len(chip),
        dtype="uint16", crs="EPSG:32632", transform=transform, compress="deflate",
    ) as dst:
        dst.write(chip)
        dst.descriptions = S2_BANDS


def generate_example_chips(out: str | Path, per_class: int = 40, n_unlabelled: int = 100,
                           size: int = 64, seed: int = 0, classes: int = len(CLASSES),
                           progress: bool = True) -> Path:
    """Write `per_class` chips of each of the first `classes` classes (and `n_unlabelled`
    unlabelled chips) under `out`; return `out`.

    An existing complete folder with the same settings is kept; an interrupted one is
    rewritten; any other non-empty folder is refused, so nothing that is not ours is lost.
    """
    if not 1 <= classes <= len(CLASSES) or per_class < 1 or n_unlabelled < 0 or size < 8:
        raise ValueError(f"need 1-{len(CLASSES)} classes, per_class >= 1, n_unlabelled >= 0 "
                         f"and size >= 8; got {classes}, {per_class}, {n_unlabelled}, {size}")
    settings = {"per_class": per_class, "n_unlabelled": n_unlabelled, "size": size,
                "seed": seed, "classes": classes}
    root = Path(out)
    marker = root / MARKER
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("complete") and recorded.get("settings") == settings:
            return root
        for folder in [p for p in root.iterdir() if p.is_dir()]:
            shutil.rmtree(folder)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"refusing to write example chips into {root}: the folder is not "
                              f"empty and has no {MARKER}. Choose an empty or new folder.")
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"complete": False, "settings": settings})
    rng = np.random.default_rng(seed)
    names = list(CLASSES)[:classes]
    jobs = [(root / name / f"{name}_{n + 1}.tif", name) for name in names
            for n in range(per_class)]
    jobs += [(root / "unlabelled" / f"chip_{n + 1}.tif", names[n % len(names)])
             for n in range(n_unlabelled)]
    for path, name in tqdm(jobs, desc="example chips", unit="chip", disable=not progress):
        _write(path, _chip(name, size, rng), rng)
    write_json_atomic(marker, {"complete": True, "settings": settings})
    log.info("wrote %d example chips to %s", len(jobs), root)
    return root
