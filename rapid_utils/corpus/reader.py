"""Reading Planet Fusion rasters: one chip as numpy (fast path) or a site's series as xarray.

Both paths check every file at the boundary (readable, band count, nodata) and raise a
`CorpusError` subclass that names the file and what to do, instead of a deep stack trace.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor used by open_rasterio)
import xarray as xr
from rasterio.errors import RasterioError
from tqdm.auto import tqdm

from rapid_utils.corpus import layout

log = logging.getLogger(__name__)

DateSelection = str | Sequence[dt.date | str]


class CorpusError(Exception):
    """A problem with the corpus on disk; the message names the path and the fix."""


class CorpusNotFoundError(CorpusError):
    """The corpus folder is missing or holds no RapidAI4EO data."""


class RasterReadError(CorpusError):
    """A GeoTIFF that cannot be read: missing, corrupt or truncated."""


class BandCountError(CorpusError):
    """A raster with another number of bands than the product has."""


class DateNotFoundError(CorpusError):
    """A requested date that has no raster for a site."""


class NodataError(CorpusError):
    """A raster with too many nodata or NaN pixels to be used."""


def available_dates(root: Path, sample_id: str, product: str = layout.PF_SR) -> list[dt.date]:
    """Dates with a raster of `product` for a site, sorted; listed from disk."""
    folder = layout.site_dir(root, sample_id) / product
    if not folder.is_dir():
        raise CorpusError(
            f"no {product} folder for site {sample_id}: expected {folder}. "
            "Is the site's imagery downloaded (or the corpus path right)?"
        )
    dates = []
    for path in folder.glob("*.tif"):
        try:
            dates.append(layout.date_from_raster_name(path))
        except ValueError:
            continue  # not a dated raster (e.g. an auxiliary file); ignore it
    return sorted(dates)


def select_dates(
    available: Sequence[dt.date], selection: DateSelection, sample_id: str = "?"
) -> list[dt.date]:
    """Pick dates: 'all', 'monthly' (first date in each month) or an explicit list."""
    if selection == "all":
        return list(available)
    if selection == "monthly":
        return layout.monthly(list(available))
    if isinstance(selection, str):
        raise ValueError(f"dates must be 'all', 'monthly' or a list of dates, got {selection!r}")
    wanted = sorted(
        {d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)) for d in selection}
    )
    missing = sorted(set(wanted) - set(available))
    if missing:
        shown = ", ".join(d.isoformat() for d in missing[:5])
        raise DateNotFoundError(
            f"site {sample_id} has no raster for {shown}"
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            + f"; it has {len(available)} dates from "
            + (f"{available[0]} to {available[-1]}" if available else "none")
        )
    return wanted


def read_raster(
    path: Path, expected_bands: int | None = len(layout.BANDS), nodata: float | None = None
) -> np.ma.MaskedArray:
    """Read a whole GeoTIFF as a masked array (bands, y, x); masked = nodata or NaN.

    `nodata` overrides the file's own nodata tag (the real corpus's value is unconfirmed).
    """
    path = Path(path)
    if not path.is_file():
        raise RasterReadError(f"missing raster {path}: re-download or regenerate this site")
    try:
        with rasterio.open(path) as src:
            if expected_bands is not None and src.count != expected_bands:
                raise BandCountError(
                    f"{path} has {src.count} bands, expected {expected_bands} "
                    f"({', '.join(layout.BANDS)} for PF-SR): is this the right product?"
                )
            data = src.read(masked=True)
    except RasterioError as error:
        raise RasterReadError(
            f"cannot read {path} ({error}); the file is corrupt or truncated: "
            "re-download or regenerate this site, or drop it from the index"
        ) from error
    mask = np.ma.getmaskarray(data)
    if nodata is not None:
        mask = mask | (data.data == nodata)
    if np.issubdtype(data.dtype, np.floating):
        mask = mask | np.isnan(data.data)
    return np.ma.MaskedArray(data.data, mask=mask)


def sample_chips(
    root: Path,
    sample_ids: Sequence[str],
    n_sites: int,
    dates_per_site: int,
    dates: DateSelection = "monthly",
    seed: int = 0,
    progress: bool = False,
    desc: str = "sampling chips",
) -> Iterator[tuple[str, np.ma.MaskedArray]]:
    """Yield (sample_id, PF-SR chip) for a seeded sample of sites and of their dates.

    Sites are drawn from `sample_ids` in sorted order, so the sample depends only on the set
    of sites and the seed. Shared by normalisation statistics and exploration plots.
    """
    root = Path(root)
    return draw_chips(
        sample_ids, n_sites, dates_per_site, seed,
        lambda sample_id: select_dates(available_dates(root, sample_id), dates, sample_id),
        lambda sample_id, date: read_raster(layout.raster_path(root, sample_id, date)),
        progress, desc,
    )


def draw_chips(
    sample_ids: Sequence[str],
    n_sites: int,
    dates_per_site: int,
    seed: int,
    site_dates: Callable[[str], list[dt.date]],
    read_chip: Callable[[str, dt.date], np.ma.MaskedArray],
    progress: bool = False,
    desc: str = "sampling chips",
) -> Iterator[tuple[str, np.ma.MaskedArray]]:
    """`sample_chips` over any chip source (the GeoTIFFs, a packed store): the same draws."""
    rng = np.random.default_rng(seed)
    ordered = np.sort(np.asarray(sample_ids, dtype=str))
    chosen = ordered[rng.permutation(len(ordered))[:n_sites]]
    for sample_id in tqdm(chosen, desc=desc, unit="site", disable=not progress):
        chosen_dates = site_dates(sample_id)
        for i in rng.permutation(len(chosen_dates))[:dates_per_site]:
            yield sample_id, read_chip(sample_id, chosen_dates[i])


def read_site(
    root: Path,
    sample_id: str,
    dates: DateSelection = "monthly",
    qa_mask: bool = True,
    qa_band: int = 1,
    qa_threshold: float = 50,
    nodata: float | None = None,
) -> xr.DataArray:
    """A site's Planet Fusion series as reflectance (0-1) in an xarray (time, band, y, x).

    Pixels that are nodata/NaN, or whose PF-QA band `qa_band` (1-based) is at or above
    `qa_threshold` (cloud confidence, percent), become NaN when `qa_mask` is set.
    Georeferencing (CRS, transform, x/y in metres) comes along through rioxarray.
    """
    root = Path(root)
    chosen = select_dates(available_dates(root, sample_id), dates, sample_id)
    if not chosen:
        raise DateNotFoundError(f"site {sample_id} has no PF-SR rasters under {root}")
    layers = []
    for date in chosen:
        path = layout.raster_path(root, sample_id, date, layout.PF_SR)
        values = read_raster(path, nodata=nodata)  # validates before rioxarray opens it
        reflectance = np.where(values.mask, np.nan, values.data / layout.REFLECTANCE_SCALE)
        if qa_mask:
            qa_path = layout.raster_path(root, sample_id, date, layout.PF_QA)
            if qa_path.exists():
                qa = read_raster(qa_path, expected_bands=None)
                if not 1 <= qa_band <= qa.shape[0]:
                    raise BandCountError(f"{qa_path} has {qa.shape[0]} bands; qa_band={qa_band}")
                cloudy = qa.data[qa_band - 1] >= qa_threshold
                reflectance = np.where(cloudy[None], np.nan, reflectance)
            else:
                log.warning("no %s: %s of site %s is not cloud-masked", qa_path, date, sample_id)
        # rioxarray supplies coordinates and CRS; pixel values come from the checked read.
        with rioxarray.open_rasterio(path) as layer:
            layers.append(layer.copy(data=reflectance.astype(np.float32)))
    series = xr.concat(layers, dim=pd.Index(pd.to_datetime(chosen), name="time"))
    series = series.assign_coords(band=list(layout.BANDS))
    series.name = "reflectance"
    series.attrs = {"sample_id": sample_id, "units": "surface reflectance (0-1)"}
    return series.rio.write_crs(layers[0].rio.crs)


def verify_sites(
    root: Path, sample_ids: Sequence[str], dates: DateSelection = "monthly", progress: bool = True
) -> pd.DataFrame:
    """Read every selected raster of the given sites; one row per problem found.

    Use it before long runs: the returned table (sample_id, path, problem) lists what to
    drop or fix, rather than a crash hours into training.
    """
    problems = []
    for sample_id in tqdm(sample_ids, desc="verifying sites", unit="site", disable=not progress):
        try:
            chosen = select_dates(available_dates(root, sample_id), dates, sample_id)
            if not chosen:
                raise DateNotFoundError(f"site {sample_id} has no PF-SR rasters")
        except CorpusError as error:
            problems.append((sample_id, str(layout.site_dir(root, sample_id)), str(error)))
            continue
        for date in chosen:
            path = layout.raster_path(root, sample_id, date, layout.PF_SR)
            try:
                values = read_raster(path)
                if values.mask.any():
                    raise NodataError(f"{path}: {values.mask.mean():.1%} nodata/NaN pixels")
            except CorpusError as error:
                problems.append((sample_id, str(path), str(error)))
    return pd.DataFrame(problems, columns=["sample_id", "path", "problem"])
