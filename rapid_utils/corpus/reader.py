"""Reading Planet Fusion rasters: one chip as numpy (fast path) or a site's series as xarray.

Both paths check every file at the boundary (readable, band count, size, nodata) and raise a
`CorpusError` subclass that names the file and what to do, instead of a deep stack trace.
The file's encoding is settled here, once (see `read_raster`): whatever the dtype (the real
product's, uint16 or int16, is unconfirmed) and nodata tag (a value, NaN or none), callers get
unsigned or float32 values and a mask of the pixels that hold no measurement.

PF-QA holds 9 bands in the real product, and which of them is the cloud mask is not
published. The band is chosen by its description (`QA_CLOUD_WORD`, see `read_site`); a QA
raster where that does not single out one band is refused, never masked on a guessed band.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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

# A PF-QA band is the cloud mask when its description contains QA_CLOUD_WORD and not
# QA_OTHER_WORD (case-insensitive): "cloud_confidence" or "Cloud probability" qualify,
# "cloud_shadow" does not. The real product's band descriptions are unconfirmed.
QA_CLOUD_WORD = "cloud"
QA_OTHER_WORD = "shadow"


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
    """A PF-QA raster whose cloud-mask band cannot be told apart: set `qa_band`."""


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
    type of the same width, negative values masked (no reflectance is below 0: a negative
    value is a sentinel); floats as float32 with NaN masked. In the last two, masked pixels
    hold 0, so no NaN or negative value reaches the caller.
    """
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


def _settled(data: np.ma.MaskedArray, nodata: float | None) -> np.ma.MaskedArray:
    """Values in one encoding per kind of dtype, and the mask of every nodata pixel."""
    values = data.data
    mask = np.ma.getmaskarray(data)
    if nodata is not None and not np.isnan(nodata):  # a NaN override: NaN is masked anyway
        mask = mask | (values == nodata)
    if np.issubdtype(values.dtype, np.floating):
        mask = mask | np.isnan(values)
        return np.ma.MaskedArray(np.where(mask, 0, values).astype(np.float32), mask=mask)
    if np.issubdtype(values.dtype, np.signedinteger):
        mask = mask | (values < 0)
        unsigned = np.dtype(f"u{values.dtype.itemsize}")
        return np.ma.MaskedArray(np.where(mask, 0, values).astype(unsigned), mask=mask)
    return np.ma.MaskedArray(values, mask=mask)


def _qa_band_index(
    path: Path, descriptions: Sequence[str | None], qa_band: int | str | None
) -> int:
    """0-based index of the cloud-mask band of a QA raster; refused when it is unclear.

    `qa_band`: a 1-based number, a band description (case-insensitive), or None to pick the
    only band, or else the one band whose description names clouds (`QA_CLOUD_WORD`).
    """
    n_bands = len(descriptions)
    if isinstance(qa_band, int | np.integer) and not isinstance(qa_band, bool):
        if not 1 <= qa_band <= n_bands:
            raise BandCountError(f"{path} has {n_bands} bands; qa_band={qa_band}")
        return int(qa_band) - 1
    if qa_band is not None and not isinstance(qa_band, str):
        raise TypeError(f"qa_band must be a band number, a description or None, got {qa_band!r}")
    if qa_band is None and n_bands == 1:
        return 0
    wanted = qa_band.strip().lower() if isinstance(qa_band, str) else None
    matches = [
        i
        for i, d in enumerate(descriptions)
        if (d and d.strip().lower() == wanted) or (wanted is None and _names_cloud_mask(d))
    ]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(
        f"{i} {d!r}" if d else f"{i} (no description)" for i, d in enumerate(descriptions, 1)
    )
    how = (
        "Set qa_band to the cloud-mask band's number (1-based) or its description, e.g. "
        f"read_site(..., qa_band={matches[0] + 1 if matches else 1}), or qa_mask=False to "
        "read without cloud masking"
    )
    if wanted is not None:
        described = f"{len(matches)} bands are" if matches else "no band is"
        raise QABandError(
            f"{path}: {described} described as qa_band={qa_band!r}; its bands: {listing}. {how}"
        )
    found = f"none of its {n_bands} bands has" if not matches else (
        f"{len(matches)} of its {n_bands} bands ("
        + ", ".join(f"{i + 1} {descriptions[i]!r}" for i in matches)
        + ") have"
    )
    raise QABandError(
        f"cannot tell which band of {path} is the cloud mask: {found} a description with "
        f"{QA_CLOUD_WORD!r} (and not {QA_OTHER_WORD!r}); its bands: {listing}. {how}"
    )


def _names_cloud_mask(description: str | None) -> bool:
    """Whether a QA band's description marks it as the cloud mask (see QA_CLOUD_WORD)."""
    text = (description or "").lower()
    return QA_CLOUD_WORD in text and QA_OTHER_WORD not in text


def _read_qa(path: Path, qa_band: int | str | None, size: int | None) -> np.ndarray:
    """The cloud-mask band (y, x) of a PF-QA raster, read alone (the others are not needed)."""
    with _open(path, None, size) as src:
        band = _qa_band_index(path, src.descriptions, qa_band)
        return src.read(band + 1)


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
    qa_band: int | str | None = None,
    qa_threshold: float = 50,
    nodata: float | None = None,
    size: int | None = None,
) -> xr.DataArray:
    """A site's Planet Fusion series as reflectance (0-1) in an xarray (time, band, y, x).

    Pixels that are nodata/NaN, or whose PF-QA cloud band is at or above `qa_threshold`
    (cloud confidence, percent), become NaN when `qa_mask` is set. The cloud band is
    `qa_band`: a 1-based number or a band description; by default the only band of a
    1-band QA raster, or else the one band whose description contains "cloud" (not
    "shadow"); a QA raster where no single band qualifies is refused (`QABandError`).
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
        if qa_mask:
            qa_path = layout.raster_path(root, sample_id, date, layout.PF_QA)
            if qa_path.exists():
                cloudy = _read_qa(qa_path, qa_band, size) >= qa_threshold
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
    root: Path,
    sample_ids: Sequence[str],
    dates: DateSelection = "monthly",
    progress: bool = True,
    size: int | None = None,
) -> pd.DataFrame:
    """Read every selected raster of the given sites; one row per problem found.

    Use it before long runs: the returned table (sample_id, path, problem) lists what to
    drop or fix, rather than a crash hours into training. Rasters must be `size` x `size`
    px (default: `corpus_size(root)`).
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
        for date in chosen:
            path = layout.raster_path(root, sample_id, date, layout.PF_SR)
            try:
                values = read_raster(path, size=size)
                if values.mask.any():
                    raise NodataError(f"{path}: {values.mask.mean():.1%} nodata/NaN pixels")
            except CorpusError as error:
                problems.append((sample_id, str(path), str(error)))
    return pd.DataFrame(problems, columns=["sample_id", "path", "problem"])
