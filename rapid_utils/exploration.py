"""Data exploration: the non-plotting half of notebooks 01 and 02.

Picks example sites, samples reflectance values, and summarises class time profiles
(mean spectra and NDVI per date) and label composition. Figures live in `plots/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from rapid_utils import labels
from rapid_utils.chip_statistics import ndvi_of
from rapid_utils.corpus import layout
from rapid_utils.corpus.reader import (
    NO_QA_MASK,
    DateSelection,
    QAMask,
    read_site,
    sample_chips,
)

if TYPE_CHECKING:  # datasets imports torch; exploration and plots do not need it
    from rapid_utils.datasets import BandStats

PROFILE_COLUMNS: tuple[str, ...] = (*layout.BANDS, "ndvi")


def dominant_share(index: pd.DataFrame) -> pd.Series:
    """Share (0-1) of each site covered by its dominant poster class."""
    return labels.class_shares(index[list(labels.SHARE_COLUMNS)]).max(axis=1)


def pick_sites_by_class(
    index: pd.DataFrame, n_sites: int, seed: int = 0, min_share: float = 0.5
) -> list[str]:
    """`n_sites` seeded sample_ids covering as many dominant classes as possible.

    Classes are visited from the most to the least common, one site each, then again
    until `n_sites` are chosen, so a short list shows the classes that make up most of the
    corpus. Within a class the sites are drawn with `seed`, those whose dominant share
    reaches `min_share` first, so that the class is visible in an image. Returned in
    poster-class order.
    """
    rng = np.random.default_rng(seed)
    ordered = index.assign(_share=dominant_share(index).to_numpy()).sort_values("sample_id")
    queues: dict[int, list[str]] = {}
    for label, members in ordered.groupby("label", sort=True):
        shuffled = members.iloc[rng.permutation(len(members))]
        clear = shuffled["_share"].to_numpy() >= min_share
        ids = shuffled["sample_id"].to_numpy()
        queues[int(label)] = [*ids[clear], *ids[~clear]]
    order = sorted(queues, key=lambda label: (-len(queues[label]), label))
    chosen: list[tuple[int, str]] = []
    while len(chosen) < min(n_sites, len(ordered)):
        for label in order:
            if queues[label] and len(chosen) < n_sites:
                chosen.append((int(label), queues[label].pop(0)))
    return [sid for _, sid in sorted(chosen)]


def read_monthly_series(
    root: str | Path, sample_ids: Sequence[str], qa: QAMask = NO_QA_MASK,
) -> dict[str, xr.DataArray]:
    """Monthly reflectance series (time, band, y, x) of a few sites, keyed by sample_id;
    pixels PF-QA flags under `qa` are NaN (by default none, see `read_site`)."""
    return {sid: read_site(Path(root), sid, dates="monthly", qa=qa) for sid in sample_ids}


def sample_band_values(
    root: str | Path,
    index: pd.DataFrame,
    n_sites: int = 32,
    dates_per_site: int = 4,
    pixels_per_image: int = 2000,
    dates: DateSelection = "monthly",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Reflectance (0-1) of valid pixels from a seeded sample of sites and dates, per band."""
    rng = np.random.default_rng(seed)
    values: list[list[np.ndarray]] = [[] for _ in layout.BANDS]
    chips = sample_chips(Path(root), index["sample_id"].tolist(), n_sites, dates_per_site, dates,
                         seed)
    for _, chip in chips:
        valid = ~np.ma.getmaskarray(chip).any(axis=0)
        pixels = chip.data[:, valid]
        keep = rng.permutation(pixels.shape[1])[:pixels_per_image]
        for band, row in enumerate(pixels[:, keep]):
            values[band].append(row.astype(np.float64) / layout.REFLECTANCE_SCALE)
    return {
        band: np.concatenate(parts) if parts else np.empty(0)
        for band, parts in zip(layout.BANDS, values, strict=True)
    }


def ndvi(series: xr.DataArray) -> xr.DataArray:
    """Per-pixel NDVI, (nir - red) / (nir + red); NaN where either band is NaN or both are 0."""
    return xr.apply_ufunc(ndvi_of, series.sel(band="red"), series.sel(band="nir")).rename("ndvi")


def site_time_profile(series: xr.DataArray) -> pd.DataFrame:
    """Per date of one site: mean reflectance per band and mean per-pixel NDVI (NaN-aware)."""
    band_means = series.mean(dim=("y", "x"), skipna=True).to_pandas()
    band_means.columns = [str(c) for c in band_means.columns]
    band_means["ndvi"] = ndvi(series).mean(dim=("y", "x"), skipna=True).to_pandas()
    band_means.index.name = "time"
    return band_means.reset_index()


def class_time_profiles(
    root: str | Path,
    index: pd.DataFrame,
    n_per_class: int = 8,
    seed: int = 0,
    min_share: float = 0.6,
    dates: DateSelection = "monthly",
    qa: QAMask = NO_QA_MASK,
) -> pd.DataFrame:
    """Tidy time profiles of up to `n_per_class` seeded sites per poster class.

    Only sites whose dominant class covers at least `min_share` take part, so a profile
    describes its class rather than a mixture; classes without such sites are absent.
    One row per site and date: sample_id, class, time, month, blue, green, red, nir
    (mean reflectance, 0-1) and ndvi (mean of per-pixel NDVI). Pixels PF-QA flags under
    `qa` are left out (by default none: Planet Fusion is gap-filled, see `read_site`).
    """
    rng = np.random.default_rng(seed)
    share = dominant_share(index)
    candidates = index[share.to_numpy() >= min_share].sort_values("sample_id")
    frames = []
    for label, members in candidates.groupby("label", sort=True):
        ids = members["sample_id"].to_numpy()[rng.permutation(len(members))[:n_per_class]]
        for sample_id in sorted(ids):
            series = read_site(Path(root), sample_id, dates=dates, qa=qa)
            profile = site_time_profile(series)
            profile.insert(0, "class", labels.CLASSES[int(label)])
            profile.insert(0, "sample_id", sample_id)
            frames.append(profile)
    columns = ["sample_id", "class", "time", "month", *PROFILE_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    profiles = pd.concat(frames, ignore_index=True)
    profiles["month"] = pd.to_datetime(profiles["time"]).dt.month
    profiles["class"] = pd.Categorical(profiles["class"], categories=labels.CLASSES)
    return profiles[columns]


def monthly_class_summary(
    profiles: pd.DataFrame, spread: tuple[float, float] = (0.25, 0.75)
) -> pd.DataFrame:
    """Per class, month and variable: mean over sites and years, and a quantile spread.

    Columns: class, month, variable (band or ndvi), mean, low, high, n (site-dates).
    """
    long = profiles.melt(
        id_vars=["sample_id", "class", "month"],
        value_vars=[c for c in PROFILE_COLUMNS if c in profiles],
        var_name="variable",
    )
    grouped = long.groupby(["class", "month", "variable"], observed=True)["value"]
    summary = grouped.agg(
        mean="mean",
        low=lambda v: v.quantile(spread[0]),
        high=lambda v: v.quantile(spread[1]),
        n="count",
    )
    return summary.reset_index()


def class_summary(index: pd.DataFrame, threshold: float = 0.1) -> pd.DataFrame:
    """Per poster class: sites it dominates, sites where it covers >= `threshold`, mean share."""
    shares = labels.class_shares(index[list(labels.SHARE_COLUMNS)])
    dominant = index["label_name"].value_counts().reindex(labels.CLASSES, fill_value=0)
    present = labels.multilabel_targets(index[list(labels.SHARE_COLUMNS)], threshold).sum()
    return pd.DataFrame(
        {
            "dominant_sites": dominant.to_numpy(),
            f"sites_with_share_ge_{threshold:g}": present.to_numpy(),
            "mean_share": shares.mean().to_numpy(),
        },
        index=pd.Index(labels.CLASSES, name="class"),
    )


def classes_per_site(index: pd.DataFrame, threshold: float = 0.1) -> pd.Series:
    """How many sites have 1, 2, ... poster classes covering at least `threshold` of them."""
    present = labels.multilabel_targets(index[list(labels.SHARE_COLUMNS)], threshold).sum(axis=1)
    counts = present.value_counts().sort_index()
    counts.index.name = "classes_present"
    return counts.rename("sites")


def band_stats_table(stats: BandStats) -> pd.DataFrame:
    """Per-band mean and std in stored units and as reflectance (0-1), one row per band."""
    table = pd.DataFrame(
        {"mean": stats.mean, "std": stats.std}, index=pd.Index(layout.BANDS, name="band")
    )
    table["mean_reflectance"] = table["mean"] / layout.REFLECTANCE_SCALE
    table["std_reflectance"] = table["std"] / layout.REFLECTANCE_SCALE
    return table
