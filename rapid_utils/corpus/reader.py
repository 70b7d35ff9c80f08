"""Reading Planet Fusion rasters: one chip as numpy (fast path) or a site's series as xarray.

Both paths check every file at the boundary (readable, band count, size, nodata) and raise a
`CorpusError` subclass that names the file and what to do, instead of a deep stack trace.
The file's encoding is settled here, once (see `read_raster`): whatever the dtype (the real
product's is most likely int16 with a -32768 fill) and nodata tag (a value, NaN or none),
callers get unsigned or float32 values and a mask of the pixels that hold no measurement. Only
the declared nodata value (or NaN) is missing; other negative values, which real surface
reflectance has over water and in shadow, are clipped to 0 and counted.

PF-QA has several bands, possibly without descriptions: band 1 the signed number of days to
the nearest real observation (0: observed that day), a cloud mask in another (band 3 in the
Planet Fusion specification). Planet Fusion is gap-filled, so by default nothing is masked and
no QA file is read; `QAMask` says what to mask when a study wants it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


class RasterSizeError(CorpusError):
    """A raster of another size than the corpus's sites."""


class QABandError(CorpusError):
    """A PF-QA band asked for that the raster does not have."""


class DateNotFoundError(CorpusError):
    """A requested date that has no raster for a site."""


class NodataError(CorpusError):
    """A raster with too many nodata or NaN pixels to be used."""


# A site whose chips are more than this share nodata is skipped (packing, `verify_sites`):
# a few missing rows at a scene edge are normal, a mostly empty site teaches nothing.
MAX_NODATA_SHARE = 0.1


@dataclass(frozen=True)
class QAMask:
    """Which pixels PF-QA takes out (NaN in `read_site`). The default takes out none.

    `cloud_band`: the cloud mask's band, a 1-based number or a band description; None for no
    cloud masking. A pixel is cloudy where that band is at or above `cloud_threshold` (1 for
    a 0/1 mask). `max_days`: also take out pixels more than this many days from a real
    observation (|band `days_band`|); None for no limit. Planet Fusion is gap-filled, so most
    studies mask nothing.
    """

    cloud_band: int | str | None = None
    cloud_threshold: float = 1
    max_days: int | None = None
    days_band: int | str = 1

    def __post_init__(self) -> None:
        for name in ("cloud_band", "days_band"):
            band = getattr(self, name)
            if band is None and name == "cloud_band":
                continue
            if isinstance(band, bool) or not (
                (isinstance(band, int | np.integer) and band >= 1)
                or (isinstance(band, str) and band.strip())
            ):
                raise ValueError(f"QA {name} must be a 1-based band number or a band "
                                 f"description, got {band!r}")
        if isinstance(self.cloud_threshold, bool) or not (
            isinstance(self.cloud_threshold, int | float) and np.isfinite(self.cloud_threshold)
        ):
            raise ValueError(f"QA cloud_threshold must be a number, got {self.cloud_threshold!r}")
        if self.max_days is not None and (
            isinstance(self.max_days, bool) or not isinstance(self.max_days, int | np.integer)
            or self.max_days < 0
        ):
            raise ValueError(f"QA max_days must be a whole number of days >= 0 or None, got "
                             f"{self.max_days!r}")

    @classmethod
    def from_parameters(cls, qa_band: int | str | None = None, qa_threshold: float = 1,
                        qa_max_days: int | None = None) -> QAMask:
        """From a profile's or notebook's flat parameters; "" means None, as in YAML files."""
        return cls(None if qa_band == "" else qa_band, qa_threshold,
                   None if qa_max_days == "" else qa_max_days)

    @property
    def active(self) -> bool:
        """Whether anything is masked (and so whether PF-QA is read at all)."""
        return self.cloud_band is not None or self.max_days is not None


NO_QA_MASK = QAMask()


def available_dates(root: Path, sample_id: str, product: str = layout.PF_SR) -> list[dt.date]:
    """Dates with a raster of `product` for a site, sorted; listed from disk."""
    folder = layout.site_dir(root, sample_id) / product
    if not folder.is_dir():
        raise CorpusError(
            f"no {product} folder for site {sample_id}: expected {folder}. "
            "Is the site's imagery downloaded (or the corpus path right)?"
        )
    return sorted(date for date, _ in layout.dated_rasters(folder))


def corpus_size(root: Path) -> int:
    """Side in pixels of every Planet Fusion raster of a corpus, for the size checks.

    The embedded corpus records the size it was generated at (its marker file); any other
    corpus is taken to be the real product, 200 x 200 px (600 m at 3 m).
    """
    from rapid_utils.corpus.synthetic import MARKER  # lazily: the generator imports scipy

    marker = Path(root) / MARKER
    if not marker.is_file():
        return layout.SITE_SIZE_PX
    try:
        return int(json.loads(marker.read_text())["settings"]["size"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorpusError(
            f"cannot read the site size from {marker} ({error!r}): regenerate the corpus, "
            "or pass `size` explicitly"
        ) from error


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
    path: Path,
    expected_bands: int | None = len(layout.BANDS),
    nodata: float | None = None,
    size: int | None = None,
) -> np.ma.MaskedArray:
    """Read a whole GeoTIFF as a masked array (bands, y, x); masked = no measurement.

    `nodata` overrides the file's own nodata tag (the real corpus's value is unconfirmed);
    `size` (pixels), when given, refuses a raster that is not `size` x `size`.
    The encoding is settled here: unsigned integers come back as stored (uint16 PF-SR, with
    nodata pixels keeping their stored value); signed integers (int16 PF-SR) as the unsigned
    type of the same width; floats as float32. In the last two only the declared nodata (and
    NaN) is masked and holds 0, and other negative values are clipped to 0 (`read_raster_counted`
    counts them), so no NaN or negative value reaches the caller.
    """
    return read_raster_counted(path, expected_bands, nodata, size)[0]


def read_raster_counted(
    path: Path,
    expected_bands: int | None = len(layout.BANDS),
    nodata: float | None = None,
    size: int | None = None,
) -> tuple[np.ma.MaskedArray, int]:
    """`read_raster`, and the number of negative values it clipped to 0 (for packing logs)."""
    with _open(path, expected_bands, size) as src:
        data = src.read(masked=True)
    return _settled(data, nodata)


@contextmanager
def _open(
    path: Path, expected_bands: int | None, size: int | None
) -> Iterator[rasterio.io.DatasetReader]:
    """An open raster whose band count and size are checked; read errors name the file."""
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
            if size is not None and (src.height, src.width) != (size, size):
                raise RasterSizeError(
                    f"{path} is {src.height} x {src.width} px, expected {size} x {size} like "
                    "the corpus's other sites: re-download or regenerate this site, or drop it "
                    "from the index (pass `size` if the corpus's sites have another size)"
                )
            yield src
    except RasterioError as error:
        raise RasterReadError(
            f"cannot read {path} ({error}); the file is corrupt or truncated: "
            "re-download or regenerate this site, or drop it from the index"
        ) from error


def _settled(data: np.ma.MaskedArray, nodata: float | None) -> tuple[np.ma.MaskedArray, int]:
    """Values in one encoding per kind of dtype, the mask of every nodata pixel, and the count
    of negative measurements clipped to 0."""
    values = data.data
    mask = np.ma.getmaskarray(data)
    if nodata is not None and not np.isnan(nodata):  # a NaN override: NaN is masked anyway
        mask = mask | (values == nodata)
    if np.issubdtype(values.dtype, np.unsignedinteger):
        return np.ma.MaskedArray(values, mask=mask), 0
    if np.issubdtype(values.dtype, np.floating):
        mask = mask | np.isnan(values)
        settled_dtype = np.dtype(np.float32)
    else:
        settled_dtype = np.dtype(f"u{values.dtype.itemsize}")
    negative = (values < 0) & ~mask
    kept = np.where(mask | negative, 0, values).astype(settled_dtype)
    return np.ma.MaskedArray(kept, mask=mask), int(negative.sum())


def check_nodata_share(nodata_pixels: int, all_pixels: int, max_share: float,
                       sample_id: str) -> None:
    """Refuse a site whose chips are more than `max_share` nodata (`NodataError`)."""
    if all_pixels and nodata_pixels / all_pixels > max_share:
        raise NodataError(f"site {sample_id} is {nodata_pixels / all_pixels:.1%} nodata/NaN, "
                          f"more than the {max_share:.0%} allowed (max_nodata_share)")


def _qa_band_index(path: Path, descriptions: Sequence[str | None], band: int | str) -> int:
    """0-based index of a QA band given as a 1-based number or a description; refused (with
    the raster's bands listed) when the raster has no such band."""
    n_bands = len(descriptions)
    if isinstance(band, str):
        wanted = band.strip().lower()
        matches = [i for i, d in enumerate(descriptions) if d and d.strip().lower() == wanted]
        if len(matches) == 1:
            return matches[0]
    elif 1 <= band <= n_bands:
        return int(band) - 1
    listing = ", ".join(
        f"{i} {d!r}" if d else f"{i} (no description)" for i, d in enumerate(descriptions, 1)
    )
    raise QABandError(
        f"{path} has no single QA band {band!r}; its {n_bands} bands: {listing}. Set qa_band "
        "(and the days band) to a band number from 1 to the count, or qa_band to empty and "
        "qa_max_days to empty to read without QA masking (Planet Fusion is gap-filled)"
    )


def _read_qa_mask(path: Path, qa: QAMask, size: int | None) -> np.ndarray:
    """Pixels (y, x) of a PF-QA raster that `qa` takes out; only the bands it needs are read."""
    with _open(path, None, size) as src:
        masked = np.zeros((src.height, src.width), dtype=bool)
        if qa.cloud_band is not None:
            band = _qa_band_index(path, src.descriptions, qa.cloud_band)
            masked |= src.read(band + 1) >= qa.cloud_threshold
        if qa.max_days is not None:
            band = _qa_band_index(path, src.descriptions, qa.days_band)
            masked |= np.abs(src.read(band + 1).astype(np.int64)) > qa.max_days
    return masked


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
    qa: QAMask = NO_QA_MASK,
    nodata: float | None = None,
    size: int | None = None,
) -> xr.DataArray:
    """A site's Planet Fusion series as reflectance (0-1) in an xarray (time, band, y, x).

    Nodata/NaN pixels become NaN, and so do the pixels PF-QA flags under `qa` (by default
    none: Planet Fusion is gap-filled, and no QA file is read).
    Every raster must be `size` x `size` px (default: `corpus_size(root)`).
    Georeferencing (CRS, transform, x/y in metres) comes along through rioxarray.
    """
    root = Path(root)
    size = corpus_size(root) if size is None else size
    chosen = select_dates(available_dates(root, sample_id), dates, sample_id)
    if not chosen:
        raise DateNotFoundError(f"site {sample_id} has no PF-SR rasters under {root}")
    layers = []
    for date in chosen:
        path = layout.raster_path(root, sample_id, date, layout.PF_SR)
        values = read_raster(path, nodata=nodata, size=size)  # checked before rioxarray opens it
        reflectance = np.where(values.mask, np.nan, values.data / layout.REFLECTANCE_SCALE)
        if qa.active:
            qa_path = layout.raster_path(root, sample_id, date, layout.PF_QA)
            if qa_path.exists():
                flagged = _read_qa_mask(qa_path, qa, size)
                reflectance = np.where(flagged[None], np.nan, reflectance)
            else:
                log.warning("no %s: %s of site %s is not QA-masked", qa_path, date, sample_id)
        # rioxarray supplies coordinates and CRS; pixel values come from the checked read.
        with rioxarray.open_rasterio(path) as layer:
            layers.append(layer.copy(data=reflectance.astype(np.float32)))
    series = xr.concat(layers, dim=pd.Index(pd.to_datetime(chosen), name="time"))
    series = series.assign_coords(band=list(layout.BANDS))
    series.name = "reflectance"
    series.attrs = {"sample_id": sample_id, "units": "surface reflectance (0-1)"}
    return series.rio.write_crs(layers[0].rio.crs)


def verify_sites(
    root: Path,
    sample_ids: Sequence[str],
    dates: DateSelection = "monthly",
    progress: bool = True,
    size: int | None = None,
    max_nodata_share: float = MAX_NODATA_SHARE,
) -> pd.DataFrame:
    """Read every selected raster of the given sites; one row per problem found.

    Use it before long runs: the returned table (sample_id, path, problem) lists what to
    drop or fix, rather than a crash hours into training. Rasters must be `size` x `size`
    px (default: `corpus_size(root)`); a site whose selected rasters are more than
    `max_nodata_share` nodata is a problem (a few nodata pixels are not).
    """
    size = corpus_size(root) if size is None else size
    problems = []
    for sample_id in tqdm(sample_ids, desc="verifying sites", unit="site", disable=not progress):
        try:
            chosen = select_dates(available_dates(root, sample_id), dates, sample_id)
            if not chosen:
                raise DateNotFoundError(f"site {sample_id} has no PF-SR rasters")
        except CorpusError as error:
            problems.append((sample_id, str(layout.site_dir(root, sample_id)), str(error)))
            continue
        nodata_pixels = all_pixels = 0
        for date in chosen:
            path = layout.raster_path(root, sample_id, date, layout.PF_SR)
            try:
                values = read_raster(path, size=size)
            except CorpusError as error:
                problems.append((sample_id, str(path), str(error)))
                continue
            nodata_pixels += int(values.mask.sum())
            all_pixels += values.mask.size
        try:
            check_nodata_share(nodata_pixels, all_pixels, max_nodata_share, sample_id)
        except NodataError as error:
            problems.append((sample_id, str(layout.site_dir(root, sample_id)), str(error)))
    return pd.DataFrame(problems, columns=["sample_id", "path", "problem"])
