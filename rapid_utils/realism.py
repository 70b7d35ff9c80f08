"""Realism: the embedded synthetic corpus measured against real Sentinel-2 chips at 10 m.

Both sides are brought to one scale before anything is compared. Embedded sites (3 m) are
resampled to 10 m by area averaging (torch's `area` interpolation, an adaptive average pool):
a 200 px site becomes 60 px (600 m); the small sites of the ci and quick profiles become
only 10 px (32 px at 3 m) or 19 px (64 px), so their spatial statistics rest on few pixels and
few frequencies. Real chips (64 px at 10 m) are centre-cropped to the same side, so both
cover the same ground. One seeded date per site is used (chips are single-date), as stored:
no cloud masking, on either side.

The real chips (`../shared/real-s2`, read in place through `corpus.chips`):
- `unlabelled-l2a`: L2A surface reflectance, no labels; a seeded sample is the reference of
  the unconditional statistics (band quantiles, spatial statistics).
- `eurosat-ms-labelled`: EuroSAT-MS, mapped to the poster classes it has (agricultural,
  forest, shrub, artificial, water); the reference of the per-class NDVI and of the
  classifiers. These chips are L1C, top of atmosphere: path radiance lifts blue and red
  (and lowers NDVI) against surface reflectance. It is the labelled imagery we have, so for
  the NDVI rows the embedded chips are first lifted to L1C by `path_offsets`, per-band
  offsets measured between the two real sets (dark-object subtraction run backwards).

Statistics (reflectance 0-1 throughout; per band unless said otherwise):
- `reflectance_qNN`: the NN % quantile of pixel reflectance, pixels pooled over chips.
- `ndvi_qNN` (per class): the NN % quantile of per-pixel NDVI, (NIR - red) / (NIR + red),
  embedded chips lifted to L1C (see above).
- `spectral_slope`: the median over chips of the log-log slope of the radially averaged
  power spectrum (Hann-windowed, mean removed, numpy FFT; power against cycles per pixel).
- `gradient_qNN`: quantiles of the gradient magnitude (central differences), reflectance
  per 10 m, pixels pooled over chips.
- `heterogeneity`: the median over chips of the within-chip std / mean.
- `imagestats_accuracy`, `cnn_accuracy`: out-of-fold accuracy (stratified CV) of
  `evaluation`'s logistic probe (fixed C, `PROBE_C`) on per-band image statistics and of a
  tiny CNN, on chips of the same classes and the same count per class on both sides;
  `spatial_signal` is their difference (CNN minus imagestats): the part of the class signal
  held in spatial structure. The `classifier` column names each.

Distance: |embedded - real| in the statistic's unit. Tolerance: set from the real chips
alone, before any comparison: the 95 % quantile of |statistic of n real chips drawn with
replacement - statistic of all real chips|, with n the embedded chip count (of the class, for
per-class rows): how far a sample of the embedded corpus's size falls from the real value by
chance alone. For the accuracies, the per-chip out-of-fold correctness is resampled (the
models are not retrained). `within`: distance <= tolerance.

What a count of rows within means: the real reference is a sample too, so even real chips
measured against other real chips (`real_against_real`) leave some rows outside; and the
embedded count moves with the sites drawn. `within_counts` sets the embedded counts of
several render seeds beside the real-against-real splits' counts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from torch import nn

from rapid_utils import evaluation, labels, paths
from rapid_utils.chip_statistics import (
    QUANTILES,
    bootstrap_quantile_tolerance,
    bootstrap_tolerance,
    gradient_magnitude,
    heterogeneity,
    ndvi,
    pixel_sample,
    pooled_quantiles,
    spectral_slopes,
)
from rapid_utils.corpus import chips, layout, synthetic
from rapid_utils.corpus.index import build_index
from rapid_utils.corpus.reader import CorpusError, corpus_size, sample_chips
from rapid_utils.io import atomic_path

log = logging.getLogger(__name__)

REAL_S2_DEFAULT = "../shared/real-s2"  # relative to the project root
LABELLED_FOLDER = "eurosat-ms-labelled"  # <Class>/*.tif, 13 bands, L1C
L2A_FOLDER = "unlabelled-l2a"  # *.tif, 4 bands B02 B03 B04 B08, L2A
LABELLED_BANDS = (2, 3, 4, 8)  # Blue, Green, Red, NIR in EuroSAT's 13-band order
L2A_BANDS = ("B02", "B03", "B04", "B08")
CLASS_MAP_FILE = "eurosat-to-poster.yaml"
REAL_GSD_M = 10.0
DARK_OBJECT_QUANTILE = 2.0  # % of pixels: the dark objects of `path_offsets`
CSV_NAME = "realism.csv"
REAL_SPLITS_CSV_NAME = "realism_real_against_real.csv"  # `real_against_real`, every split
RENDER_SEEDS_CSV_NAME = "realism_render_seeds.csv"  # `appearance_rows` of further render seeds
COLUMNS = ("statistic", "band", "class", "embedded", "real", "distance", "tolerance", "within",
           "unit", "reference", "n_embedded", "n_real", "classifier")
# The class-signal probe's C, fixed rather than searched: a search inside each fold would change
# the numbers this table has always given for little, as both sides use the same probe.
PROBE_C = evaluation.PROBE_FIXED_C
ALL = "all"  # the `class` of unconditional rows and the `band` of rows over all bands


class RealChipsNotFoundError(CorpusError):
    """The real Sentinel-2 chips folder is missing or lacks its sub-folders."""


@dataclass(frozen=True)
class ChipSet:
    """Single-date chips at 10 m: reflectance (N, 4, S, S) in Blue, Green, Red, NIR order,
    NaN for nodata, and each chip's poster class ("" where it has none)."""

    name: str
    images: np.ndarray
    classes: np.ndarray
    source_gsd_m: float  # pixel size before resampling to 10 m
    source_side: int  # side in px before resampling and cropping

    @property
    def side(self) -> int:
        """Side of the chips in 10 m pixels."""
        return int(self.images.shape[-1])

    def describe(self) -> str:
        """One line: how many chips, their size at 10 m, and where they come from."""
        return (f"{self.name}: {len(self.images)} chips of {self.side} x {self.side} px at "
                f"{REAL_GSD_M:g} m ({self.side * REAL_GSD_M:g} m), from {self.source_side} px "
                f"at {self.source_gsd_m:g} m")

    def subset(self, keep: np.ndarray) -> ChipSet:
        """The chips at positions (or mask) `keep`."""
        return dataclasses.replace(self, images=self.images[keep], classes=self.classes[keep])


# --------------------------------------------------------------------------- chips


def resample_to_gsd(images: np.ndarray, gsd_m: float, target_gsd_m: float = REAL_GSD_M
                    ) -> np.ndarray:
    """(N, C, S, S) images at `gsd_m` resampled to `target_gsd_m` by area averaging."""
    side = max(1, round(images.shape[-1] * gsd_m / target_gsd_m))
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return F.interpolate(tensor, size=(side, side), mode="area").numpy()


def centre_crop(images: np.ndarray, side: int) -> np.ndarray:
    """The central `side` x `side` px of (..., S, S) images (unchanged when not larger)."""
    top = max(0, (images.shape[-2] - side) // 2)
    left = max(0, (images.shape[-1] - side) // 2)
    return images[..., top:top + side, left:left + side]


def embedded_chips(root: str | Path, index: pd.DataFrame | None = None, n_sites: int = 200,
                   seed: int = 0) -> ChipSet:
    """One seeded monthly date of `n_sites` seeded sites of an embedded corpus, at 10 m.

    A site's class is its dominant poster class (the index's `label_name`).
    """
    root = Path(root)
    index = build_index(root, progress=False) if index is None else index
    drawn = list(sample_chips(root, index["sample_id"].tolist(), n_sites, 1, "monthly", seed))
    stored = np.stack([chip.astype(np.float32).filled(np.nan) for _, chip in drawn])
    names = index.set_index("sample_id")["label_name"]
    classes = np.array([names[sample_id] for sample_id, _ in drawn], dtype=object)
    images = resample_to_gsd(stored / layout.REFLECTANCE_SCALE, layout.PIXEL_SIZE_M)
    return ChipSet("embedded", images, classes, layout.PIXEL_SIZE_M, corpus_size(root))


def render_sites(n_sites: int, seed: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(reflectance (4, size, size) as stored, CLC code map) of `n_sites` seeded sites at 3 m,
    one seeded monthly date each: what `rendered_chips` measures, with each pixel's code."""
    plans = synthetic.plan_sites(n_sites, seed, size)
    dates = synthetic.synth_dates("monthly")
    picked = np.random.default_rng([seed, 17]).integers(len(dates), size=len(plans))
    for plan, k in zip(plans, picked, strict=True):
        reflectance, _, code_map = synthetic.render_site(plan, [dates[k]], size)
        stored = synthetic.stored_values(reflectance[0])
        yield stored.astype(np.float32) / layout.REFLECTANCE_SCALE, code_map


def rendered_chips(n_sites: int = 200, seed: int = 0, size: int = layout.SITE_SIZE_PX
                   ) -> ChipSet:
    """`n_sites` seeded sites drawn by the generator in memory at `size` px (3 m), one seeded
    monthly date each, stored values (rounded to the corpus's scale), at 10 m.

    The realism measurement uses this rather than a corpus on disk, so that it always sees
    sites of the real RapidAI4EO size (200 px, 600 m) whatever size a profile's corpus has.
    A site's class is its dominant poster class, as the index counts it from the drawn map.
    """
    images, classes = [], []
    for image, code_map in render_sites(n_sites, seed, size):
        images.append(image)
        shares = pd.DataFrame([synthetic.label_shares(code_map)])
        classes.append(labels.CLASSES[labels.dominant_class(shares).iloc[0]])
    return ChipSet("embedded (rendered)", resample_to_gsd(np.stack(images), layout.PIXEL_SIZE_M),
                   np.array(classes, dtype=object), layout.PIXEL_SIZE_M, size)


def real_s2_dir(location: str | Path = REAL_S2_DEFAULT) -> Path:
    """The real chips folder: an absolute path, or one relative to the project root."""
    return (paths.project_root() / Path(location).expanduser()).resolve()


def _check_real_dir(folder: Path) -> None:
    for needed in (folder, folder / LABELLED_FOLDER, folder / L2A_FOLDER):
        if not needed.is_dir():
            raise RealChipsNotFoundError(
                f"no real Sentinel-2 chips folder at {needed}: the realism measurement needs "
                f"{folder}/{LABELLED_FOLDER}/<Class>/*.tif and {folder}/{L2A_FOLDER}/*.tif "
                "(see the folder's README.md); point `real_s2_dir` to where they are, or skip "
                "the realism measurement"
            )


def real_chips_spec(folder: Path) -> chips.ChipsSpec:
    """How the real chips are read: EuroSAT's labelled chips and the L2A folder as a source."""
    return chips.ChipsSpec(
        root=folder / LABELLED_FOLDER, bands=LABELLED_BANDS,
        unlabelled=(chips.ChipSource(folder / L2A_FOLDER, bands=L2A_BANDS),),
        class_map=chips.read_class_map(str(paths.classmaps_dir() / CLASS_MAP_FILE), folder),
    )


def _read_chips(files: Sequence[str | Path], spec: chips.ChipsSpec, source: str
                ) -> np.ndarray:
    """Chips as reflectance (N, 4, S, S), NaN for nodata."""
    return np.stack([chips.read_chip(path, spec, source).filled(np.nan)
                     / layout.REFLECTANCE_SCALE for path in files]).astype(np.float32)


def real_chips(folder: str | Path, side: int | None = None, n_l2a: int = 500, seed: int = 0
               ) -> tuple[ChipSet, ChipSet]:
    """(labelled EuroSAT chips with poster classes, a seeded sample of `n_l2a` L2A chips),
    centre-cropped to `side` px (the embedded chips' side at 10 m; None keeps 64)."""
    folder = Path(folder)
    _check_real_dir(folder)
    spec = real_chips_spec(folder)
    found = chips.build_chips_index(dataclasses.replace(spec, unlabelled=()), progress=False)
    labelled = _read_chips(found.labelled["path"], spec, chips.LABELLED_SOURCE)
    pool = sorted(p for p in (folder / L2A_FOLDER).iterdir()
                  if p.suffix.lower() in chips.CHIP_SUFFIXES)
    if not pool:
        raise RealChipsNotFoundError(f"no .tif chips in {folder / L2A_FOLDER}")
    picked = np.random.default_rng(seed).permutation(len(pool))[:n_l2a]
    l2a = _read_chips([pool[k] for k in sorted(picked)], spec, spec.unlabelled[0].name)
    with np.errstate(invalid="ignore"):
        has_image = np.any(np.nan_to_num(l2a) > 0, axis=(1, 2, 3))  # as the chips index skips
    side = side or labelled.shape[-1]
    named = ChipSet("EuroSAT-MS (L1C, labelled)", centre_crop(labelled, side),
                    found.labelled["label_name"].to_numpy(dtype=object), REAL_GSD_M,
                    labelled.shape[-1])
    unnamed = ChipSet("unlabelled L2A", centre_crop(l2a[has_image], side),
                      np.full(int(has_image.sum()), "", dtype=object), REAL_GSD_M, l2a.shape[-1])
    return named, unnamed


def example_pairs(embedded: ChipSet, labelled: ChipSet, pool: ChipSet, per_row: int = 4,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row caption -> (embedded chips, real chips), up to `per_row` seeded chips each: first
    any chips against the L2A pool, then each shared class against its labelled chips."""
    rng = np.random.default_rng(seed)

    def drawn(chipset: ChipSet, name: str | None = None) -> np.ndarray:
        members = np.flatnonzero(chipset.classes == name) if name else np.arange(
            len(chipset.images))
        return chipset.images[np.sort(rng.permutation(members)[:per_row])]

    pairs = {f"all · {pool.name}": (drawn(embedded), drawn(pool))}
    for name in shared_classes(embedded, labelled):
        pairs[f"{name} · {labelled.name}"] = (drawn(embedded, name), drawn(labelled, name))
    return pairs


# --------------------------------------------------------------------------- table rows


def compare(statistic: str, embedded: np.ndarray, real: np.ndarray, tolerance: np.ndarray,
            bands: Sequence[str], class_name: str = ALL, unit: str = "", reference: str = "",
            n_embedded: int = 0, n_real: int = 0, classifier: str = "") -> pd.DataFrame:
    """Rows of the realism table: one per band, distance |embedded - real| against tolerance;
    `classifier` names what produced an accuracy ("" for statistics of the images alone)."""
    embedded, real = np.atleast_1d(embedded), np.atleast_1d(real)
    distance = np.abs(embedded - real)
    tolerance = np.broadcast_to(tolerance, distance.shape)
    return pd.DataFrame({
        "statistic": statistic, "band": list(bands), "class": class_name, "embedded": embedded,
        "real": real, "distance": distance, "tolerance": tolerance,
        "within": distance <= tolerance, "unit": unit, "reference": reference,
        "n_embedded": n_embedded, "n_real": n_real, "classifier": classifier,
    })


def _quantile_rows(name: str, embedded: np.ndarray, real: np.ndarray, bands: Sequence[str],
                   unit: str, reference: str, class_name: str = ALL, seed: int = 0
                   ) -> list[pd.DataFrame]:
    """Pooled-quantile rows; tolerances first, from the real chips alone."""
    tolerance = bootstrap_quantile_tolerance(real, len(embedded), seed=seed)
    real_value, embedded_value = pooled_quantiles(real), pooled_quantiles(embedded)
    return [compare(f"{name}_q{q:02d}", embedded_value[k], real_value[k], tolerance[k], bands,
                    class_name, unit, reference, len(embedded), len(real))
            for k, q in enumerate(QUANTILES)]


def _median_rows(name: str, embedded: np.ndarray, real: np.ndarray, unit: str, reference: str,
                 seed: int = 0) -> pd.DataFrame:
    """Rows of a per-chip, per-band statistic (N, C) compared by its median over chips."""
    def median(values: np.ndarray) -> np.ndarray:
        return np.nanmedian(values, axis=0)

    tolerance = bootstrap_tolerance(real, median, len(embedded), seed=seed)
    return compare(name, median(embedded), median(real), tolerance, layout.BANDS, ALL, unit,
                   reference, len(embedded), len(real))


def path_offsets(top_of_atmosphere: ChipSet, surface: ChipSet,
                 quantile: float = DARK_OBJECT_QUANTILE) -> np.ndarray:
    """Per-band path-radiance offset (4,): the `quantile` % of a top-of-atmosphere (L1C) set's
    pixels minus the same quantile of a surface-reflectance (L2A) set's.

    Dark objects (deep water, shade) reflect almost nothing at the surface, so what L1C shows
    over them is mostly light scattered by the atmosphere: the premise of dark-object
    subtraction, here run backwards to lift surface reflectance to an approximate L1C.
    """
    def dark(chipset: ChipSet) -> np.ndarray:
        images = chipset.images
        return pooled_quantiles(images.reshape(*images.shape[:2], -1), [quantile])[0]

    return np.maximum(dark(top_of_atmosphere) - dark(surface), 0.0)


def band_rows(embedded: ChipSet, pool: ChipSet, seed: int = 0) -> pd.DataFrame:
    """Pooled band quantiles of surface reflectance against the L2A pool."""
    return pd.concat(_quantile_rows("reflectance", pixel_sample(embedded.images, seed=seed),
                                    pixel_sample(pool.images, seed=seed), layout.BANDS,
                                    "reflectance", pool.name, seed=seed), ignore_index=True)


def ndvi_rows(embedded: ChipSet, labelled: ChipSet, offsets: np.ndarray, reference: str,
              seed: int = 0) -> pd.DataFrame:
    """Per-class NDVI quantiles against labelled chips, the embedded chips first shifted by
    per-band `offsets` (4,) (`path_offsets` to lift surface reflectance to L1C)."""
    shifted = embedded.images + np.asarray(offsets)[None, :, None, None]
    embedded_ndvi = pixel_sample(ndvi(shifted), seed=seed)
    real_ndvi = pixel_sample(ndvi(labelled.images), seed=seed)
    rows = [row for name in shared_classes(embedded, labelled)
            for row in _quantile_rows("ndvi", embedded_ndvi[embedded.classes == name],
                                      real_ndvi[labelled.classes == name], ["ndvi"], "NDVI",
                                      reference, name, seed)]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(COLUMNS))


def spectral_rows(embedded: ChipSet, pool: ChipSet, labelled: ChipSet, seed: int = 0
                  ) -> pd.DataFrame:
    """Band quantiles against the L2A pool; per-class NDVI quantiles against labelled chips,
    the embedded chips (surface reflectance) first lifted to L1C by `path_offsets`."""
    reference = f"{labelled.name}; embedded + L1C path offsets"
    return pd.concat([band_rows(embedded, pool, seed),
                      ndvi_rows(embedded, labelled, path_offsets(labelled, pool), reference,
                                seed)], ignore_index=True)


def spatial_rows(embedded: ChipSet, pool: ChipSet, seed: int = 0) -> pd.DataFrame:
    """Spectral slope, gradient magnitude quantiles and heterogeneity against the L2A pool."""
    rows = [_median_rows("spectral_slope", spectral_slopes(embedded.images),
                         spectral_slopes(pool.images), "log10 power / log10 frequency",
                         pool.name, seed)]
    rows += _quantile_rows("gradient", pixel_sample(gradient_magnitude(embedded.images), seed=seed),
                           pixel_sample(gradient_magnitude(pool.images), seed=seed), layout.BANDS,
                           "reflectance per 10 m", pool.name, seed=seed)
    rows.append(_median_rows("heterogeneity", heterogeneity(embedded.images),
                             heterogeneity(pool.images), "std / mean", pool.name, seed))
    return pd.concat(rows, ignore_index=True)


def appearance_rows(embedded: ChipSet, labelled: ChipSet, pool: ChipSet, seed: int = 0
                    ) -> pd.DataFrame:
    """The band, NDVI and spatial rows: how the chips look, without the class-signal rows
    (their classifiers are the slow part); what `within_counts` counts."""
    return pd.concat([spectral_rows(embedded, pool, labelled, seed),
                      spatial_rows(embedded, pool, seed)], ignore_index=True)


def real_against_real(labelled: ChipSet, pool: ChipSet, n_sample: int, n_splits: int = 10,
                      seed: int = 0) -> pd.DataFrame:
    """The band, NDVI and spatial rows that real imagery itself scores, per random split
    (column `split`): `n_sample` pool chips (at most half) and half of each labelled class
    are measured as if they were embedded chips against the real chips left over (NDVI
    unshifted: both of its sides are L1C).

    A generator indistinguishable from real imagery would score about this many rows within
    their tolerance; the spread over splits is the chance spread of that count. The class-
    signal rows are left out (a CNN per split would be slow).
    """
    n_sample = min(n_sample, len(pool.images) // 2)
    tables = []
    for split in range(n_splits):
        rng = np.random.default_rng([seed, split])
        in_sample = np.zeros(len(pool.images), dtype=bool)
        in_sample[rng.choice(len(pool.images), n_sample, replace=False)] = True
        labelled_sample = np.zeros(len(labelled.images), dtype=bool)
        for name in np.unique(labelled.classes.astype(str)):
            members = np.flatnonzero(labelled.classes == name)
            labelled_sample[rng.choice(members, len(members) // 2, replace=False)] = True
        sample, reference = pool.subset(in_sample), pool.subset(~in_sample)
        table = pd.concat([band_rows(sample, reference, seed),
                           ndvi_rows(labelled.subset(labelled_sample),
                                     labelled.subset(~labelled_sample), np.zeros(4),
                                     labelled.name, seed),
                           spatial_rows(sample, reference, seed)], ignore_index=True)
        tables.append(table[list(COLUMNS)].astype({"within": bool}).assign(split=split))
    return pd.concat(tables, ignore_index=True)


def within_counts(embedded: Mapping[int, pd.DataFrame], real_splits: pd.DataFrame
                  ) -> pd.DataFrame:
    """Rows within tolerance on the statistics `real_splits` holds: the count of each embedded
    table (render seed -> realism rows; source "embedded", `split` the render seed) and of
    each split of `real_against_real` (source "real against real")."""
    keys = ["statistic", "band", "class"]
    statistics = real_splits[keys].drop_duplicates()
    counted = [(seed, table.merge(statistics, on=keys)) for seed, table in embedded.items()]
    embedded_counts = pd.DataFrame({
        "source": "embedded", "split": [seed for seed, _ in counted],
        "within": [int(shared["within"].sum()) for _, shared in counted],
        "rows": [len(shared) for _, shared in counted]})
    counts = real_splits.groupby("split")["within"].agg(within="sum", rows="size").reset_index()
    return pd.concat([embedded_counts, counts.assign(source="real against real")],
                     ignore_index=True)[["source", "split", "within", "rows"]]


# --------------------------------------------------------------------------- class signal


def shared_classes(embedded: ChipSet, real: ChipSet) -> list[str]:
    """Poster classes present on both sides, in the poster's order."""
    present = set(embedded.classes) & set(real.classes)
    return [name for name in labels.CLASSES if name in present]


def matched_samples(embedded: ChipSet, real: ChipSet, seed: int = 0
                    ) -> tuple[ChipSet, ChipSet]:
    """Both sets cut to their shared classes with the same chip count per class (the smaller
    side's, seeded draws), so accuracies compare at equal chance level and sample size.
    Classes with fewer than 2 chips on either side are left out (no stratified CV)."""
    rng = np.random.default_rng(seed)
    keep_embedded, keep_real = [], []
    for name in shared_classes(embedded, real):
        members_e = np.flatnonzero(embedded.classes == name)
        members_r = np.flatnonzero(real.classes == name)
        count = min(len(members_e), len(members_r))
        if count < 2:
            continue
        keep_embedded += sorted(rng.choice(members_e, count, replace=False))
        keep_real += sorted(rng.choice(members_r, count, replace=False))
    return embedded.subset(np.array(keep_embedded, dtype=int)), real.subset(
        np.array(keep_real, dtype=int))


class TinyCNN(nn.Module):
    """Three 3 x 3 convolutions (two with stride 2), global average pooling, a linear head."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_cnn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                      epochs: int = 20, seed: int = 0) -> np.ndarray:
    """Labels of `test_x` from a TinyCNN trained on (train_x, train_y), seeded, on the CPU.

    Bands are standardised with the training images' statistics (NaN then 0); training
    uses Adam, batches of 32 and random flips and quarter turns.
    """
    mean = np.nanmean(train_x, axis=(0, 2, 3), keepdims=True)
    std = np.nanstd(train_x, axis=(0, 2, 3), keepdims=True) + 1e-6

    def prepared(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.nan_to_num((images - mean) / std).astype(np.float32))

    inputs, targets = prepared(train_x), torch.from_numpy(train_y.astype(np.int64))
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(seed)
        model = TinyCNN(train_x.shape[1], int(train_y.max()) + 1)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(inputs)).split(32):
                views = inputs[batch]
                if torch.rand(()) < 0.5:
                    views = views.flip(-1)
                views = torch.rot90(views, int(torch.randint(4, ())), dims=(-2, -1))
                loss = F.cross_entropy(model(views), targets[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        model.eval()
        with torch.no_grad():
            return model(prepared(test_x)).argmax(dim=1).numpy()


def out_of_fold_correct(chipset: ChipSet, seed: int = 0, cnn_epochs: int = 20
                        ) -> dict[str, np.ndarray]:
    """Per chip, whether its out-of-fold prediction is right: "imagestats"
    (`evaluation.linear_probe_predict` with C `PROBE_C` on `evaluation.imagestats_features`)
    and "cnn" (TinyCNN), same stratified folds (5, or the smallest class count)."""
    names, y = np.unique(chipset.classes.astype(str), return_inverse=True)
    folds = StratifiedKFold(min(5, int(np.bincount(y).min())), shuffle=True, random_state=seed)
    features = evaluation.imagestats_features(chipset.images)
    stats_pred, cnn_pred = np.empty_like(y), np.empty_like(y)
    for fold, (train, test) in enumerate(folds.split(features, y)):
        stats_pred[test] = evaluation.linear_probe_predict(features[train], y[train],
                                                           features[test], C=PROBE_C)
        cnn_pred[test] = train_cnn_predict(chipset.images[train], y[train],
                                           chipset.images[test], cnn_epochs, seed + fold)
    return {"imagestats": stats_pred == y, "cnn": cnn_pred == y}


def class_signal_rows(embedded: ChipSet, labelled: ChipSet, seed: int = 0, cnn_epochs: int = 20
                      ) -> pd.DataFrame:
    """Imagestats and CNN accuracy and their difference, embedded against labelled chips."""
    embedded, labelled = matched_samples(embedded, labelled, seed)
    if len(set(labelled.classes)) < 2:
        log.warning("fewer than 2 shared classes with 2 chips each: no class-signal rows")
        return pd.DataFrame(columns=list(COLUMNS))
    real = out_of_fold_correct(labelled, seed, cnn_epochs)
    real["spatial_signal"] = real["cnn"].astype(float) - real["imagestats"]
    tolerances = {name: bootstrap_tolerance(values.astype(float), np.mean, len(embedded.images),
                                            seed=seed) for name, values in real.items()}
    emb = out_of_fold_correct(embedded, seed, cnn_epochs)  # looked at after the tolerances
    emb["spatial_signal"] = emb["cnn"].astype(float) - emb["imagestats"]
    probe, cnn = evaluation.probe_name(PROBE_C), f"TinyCNN ({cnn_epochs} epochs)"
    rows = [compare(name, np.mean(emb[key]), np.mean(real[key]), tolerances[key], [ALL], ALL,
                    "accuracy (0-1)", labelled.name, len(emb[key]), len(real[key]), classifier)
            for key, name, classifier in (
                ("imagestats", "imagestats_accuracy", probe), ("cnn", "cnn_accuracy", cnn),
                ("spatial_signal", "spatial_signal", f"{cnn} minus {probe}"))]
    return pd.concat(rows, ignore_index=True)


# --------------------------------------------------------------------------- the table


def measure_realism(embedded: ChipSet, labelled: ChipSet, pool: ChipSet, seed: int = 0,
                    cnn_epochs: int = 20) -> pd.DataFrame:
    """The realism table (COLUMNS): spectral, spatial and class-signal statistics.

    Chips must share one side at 10 m (see `real_chips`); every tolerance is set from the
    real chips and the embedded chip count before the embedded value is looked at.
    """
    sides = {embedded.side, labelled.side, pool.side}
    if len(sides) != 1:
        raise ValueError(f"chips of different sides {sorted(sides)} px: crop the real chips to "
                         "the embedded side (real_chips(..., side=embedded.side))")
    table = pd.concat([appearance_rows(embedded, labelled, pool, seed),
                       class_signal_rows(embedded, labelled, seed, cnn_epochs)],
                      ignore_index=True)
    return table[list(COLUMNS)].astype({"within": bool})


def write_realism_csv(table: pd.DataFrame, directory: str | Path, name: str = CSV_NAME
                      ) -> Path:
    """Write a realism table (COLUMNS, perhaps more) as `directory/name`, atomically; return
    its path."""
    missing = sorted(set(COLUMNS) - set(table.columns))
    if missing:
        raise ValueError(f"the realism table lacks the column(s) {missing}")
    path = Path(directory) / name
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return path
