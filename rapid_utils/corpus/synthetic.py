"""The embedded synthetic corpus: a small RapidAI4EO look-alike in the real on-disk layout.

Every site is a mixture of land-cover regions drawn on a 3 m grid. Each region has a CORINE
level-3 code, a spectral signature (Blue, Green, Red, NIR surface reflectance), a spatial
texture (fields, tree crowns, street grids, smooth water) and a seasonal cycle; dates add
illumination changes, sensor noise, occasional haze or cloud (flagged in PF-QA) and winter
snow in the north. Files take the form the evidence gives for the real ones (see
`../shared/REAL_FORMAT.md` and `layout`): ids `{utmz}_{tile}_{col}_{row}`, int16 PF-SR with a
-32768 nodata tag, slightly negative dark pixels and a few nodata rows, a 3-band PF-QA without
band descriptions (`QA_BANDS`), and label files both as bare Features and as collections.
The CLC shares are counted from the drawn map, so labels are true to the pixels by
construction. Sites are generated independently from per-site seeds, so the
corpus is the same for a given seed whatever the number of worker processes.
"""

from __future__ import annotations

import concurrent.futures as futures
import datetime as dt
import gzip
import json
import logging
import multiprocessing
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.transform import from_origin
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from rapid_utils import geo
from rapid_utils.corpus import appearance, layout, textures
from rapid_utils.io import atomic_path, write_json_atomic
from rapid_utils.labels import CLASSES, CLC_CODES, SHARE_COLUMNS

log = logging.getLogger(__name__)

MARKER = "SYNTHETIC.json"
# Bumped with every change of what the generator draws: a corpus written by another version
# has other pixels for the same settings, so it is regenerated rather than kept.
GENERATOR_VERSION = 6
# PF-QA as the Planet Fusion specification describes it, written without band descriptions:
# band 1 the signed days to the nearest real observation (0: observed that day, otherwise
# gap-filled), band 3 a cloud mask (1: the observation was cloudy). What band 2 holds is not
# documented in the sources we have; the generator writes 0 there.
QA_BANDS = {"days_to_observation": 1, "cloud_mask": 3}
QA_BAND_COUNT = 3
DTYPES = ("int16", "uint16")
INT16_NODATA = -32768  # the fill of int16 PF-SR (FoMo-Bench's published statistics)
NODATA_ROW_PROBABILITY = 0.05  # int16 files: chance that a date's top pixel row is nodata

# How often each poster class dominates a site (agriculture and forest common, wetlands rare).
DOMINANT_PRIOR = {
    "agricultural": 0.34,
    "forest": 0.28,
    "shrub": 0.10,
    "artificial": 0.08,
    "water": 0.14,
    "bare": 0.03,
    "wetlands": 0.03,
}
# Which classes tend to share a site with a dominant class.
NEIGHBOURS = {
    "artificial": {"agricultural": 3, "forest": 1, "shrub": 1, "water": 1},
    "agricultural": {"artificial": 2, "forest": 3, "shrub": 2, "water": 1, "wetlands": 0.5},
    "forest": {"agricultural": 2, "shrub": 3, "water": 0.3, "bare": 0.2, "wetlands": 0.3},
    "shrub": {"forest": 3, "agricultural": 2, "bare": 1.5, "wetlands": 0.5},
    "bare": {"shrub": 3, "forest": 1, "water": 1},
    "wetlands": {"water": 3, "agricultural": 1, "forest": 1, "shrub": 1},
    "water": {"agricultural": 2, "forest": 2, "wetlands": 1.5, "artificial": 1},
}
# Level-3 codes drawn for a region of each class, with weights.
CODE_WEIGHTS = {
    "artificial": {
        111: 1,
        112: 4,
        121: 2,
        122: 0.5,
        123: 0.3,
        124: 0.3,
        131: 0.5,
        132: 0.2,
        133: 0.3,
        141: 0.6,
        142: 0.6,
    },
    "agricultural": {
        211: 6,
        212: 0.3,
        213: 0.1,
        221: 0.5,
        222: 0.5,
        223: 0.4,
        231: 3,
        241: 0.1,
        242: 1.5,
        243: 1.2,
        244: 0.2,
    },
    "forest": {311: 3, 312: 4, 313: 2},
    "shrub": {321: 2, 322: 1, 323: 1, 324: 3},
    "bare": {331: 1, 332: 2, 333: 2, 334: 0.5, 335: 0.5},
    "wetlands": {411: 3, 412: 2, 421: 1, 422: 0.3, 423: 1},
    "water": {511: 1, 512: 4, 521: 0.5, 522: 0.5, 523: 2},
}


@dataclass(frozen=True)
class SitePlan:
    """Everything needed to render one site, fixed in the parent so workers are independent."""

    sample_id: str
    lon: float
    lat: float
    epsg: int
    left: float
    top: float
    dominant: str
    seed: int


@dataclass(frozen=True)
class SynthSettings:
    """Parameters of a synthetic corpus; stored in its marker file."""

    n_sites: int
    seed: int
    size: int
    dates: tuple[str, ...]
    compress: str | None
    dtype: str = "int16"
    generator_version: int = GENERATOR_VERSION


def synth_dates(dates: str | Sequence[dt.date | str] = "monthly") -> list[dt.date]:
    """Dates to write: 'monthly' (first PF date of each month, 24), 'all' (146) or a list."""
    all_dates = layout.pf_dates()
    if dates == "monthly":
        return layout.monthly(all_dates)
    if dates == "all":
        return all_dates
    if isinstance(dates, str):
        raise ValueError(f"dates must be 'monthly', 'all' or a list of dates, got {dates!r}")
    chosen = sorted({d if isinstance(d, dt.date) else dt.date.fromisoformat(d) for d in dates})
    if not chosen:
        raise ValueError("dates is an empty list")
    return chosen


def plan_sites(n_sites: int, seed: int, size: int) -> list[SitePlan]:
    """Place non-overlapping sites on land that CORINE maps, in clusters sharing a regional mix."""
    rng = np.random.default_rng([seed, 0])
    west, east, south, north = geo.EUROPE_EXTENT
    n_clusters = max(1, n_sites // 8)
    centres: list[tuple[float, float]] = []
    while len(centres) < n_clusters:
        lon = rng.uniform(-10.0, east - 2.0, 4 * n_clusters)
        lat = rng.uniform(south + 1.0, north - 1.0, 4 * n_clusters)
        land = geo.in_clc_coverage(lon, lat)
        centres.extend(zip(lon[land], lat[land], strict=True))
    centres = centres[:n_clusters]
    classes = list(DOMINANT_PRIOR)
    base_prior = np.array([DOMINANT_PRIOR[c] for c in classes])
    site_extent = size * layout.PIXEL_SIZE_M
    # Sites sit in the real corpus's 600 m cells (a larger site in a block of them), so ids
    # take the real form `{utmz}_{tile}_{col}_{row}` and no two sites overlap.
    step = layout.SITE_CELL_M * int(np.ceil(site_extent / layout.SITE_CELL_M))
    taken: set[tuple[int, int, int]] = set()
    plans: list[SitePlan] = []
    attempts = 0
    while len(plans) < n_sites:
        attempts += 1
        if attempts > 100 * n_sites:
            raise RuntimeError("could not place synthetic sites on land; lower n_sites")
        c_lon, c_lat = centres[len(plans) % n_clusters]
        lon = c_lon + rng.normal(0, 0.12)
        lat = c_lat + rng.normal(0, 0.08)
        if not geo.in_clc_coverage(np.array([lon]), np.array([lat]))[0]:
            continue
        if abs((lon + 180.0) % 6.0 - 3.0) > 2.98:  # keep off UTM zone edges: grids differ there
            continue
        epsg = geo.utm_epsg(lon, lat)
        easting, northing = geo.to_utm(lon, lat, epsg)
        cell = (epsg, int(easting // step), int(northing // step))
        if cell in taken:
            continue
        taken.add(cell)
        cell_left, cell_bottom = cell[1] * step, cell[2] * step
        # inside its cell, the site sits on a grid of its own extent, over the planned point
        left = min(cell_left + (easting - cell_left) // site_extent * site_extent,
                   cell_left + step - site_extent)
        bottom = min(cell_bottom + (northing - cell_bottom) // site_extent * site_extent,
                     cell_bottom + step - site_extent)
        prior = base_prior * _latitude_weights(lat, classes)
        cluster_rng = np.random.default_rng([seed, 1, len(plans) % n_clusters])
        prior = prior * cluster_rng.gamma(2.0, 0.5, len(classes))  # regional character
        dominant = classes[rng.choice(len(classes), p=prior / prior.sum())]
        plans.append(
            SitePlan(
                sample_id=layout.cell_sample_id(f"{epsg - 32600}N", cell_left, cell_bottom),
                lon=float(lon),
                lat=float(lat),
                epsg=epsg,
                left=float(left),
                top=float(bottom + site_extent),
                dominant=dominant,
                seed=int(rng.integers(2**31)),
            )
        )
    return plans


def _latitude_weights(lat: float, classes: list[str]) -> np.ndarray:
    """More forest and wetland in the north, more shrub and bare land in the south."""
    north = np.clip((lat - 50.0) / 15.0, 0.0, 1.0)
    south = np.clip((45.0 - lat) / 8.0, 0.0, 1.0)
    boost = {
        "forest": 1 + north,
        "wetlands": 1 + 2 * north,
        "shrub": 1 + 1.5 * south,
        "bare": 1 + south,
        "agricultural": 1 - 0.4 * north,
    }
    return np.array([boost.get(c, 1.0) for c in classes])


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-9)


def _rotated_coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    offset = rng.uniform(0, 100, 2)
    u = xx * np.cos(angle) + yy * np.sin(angle) + offset[0]
    v = -xx * np.sin(angle) + yy * np.cos(angle) + offset[1]
    return u, v


def _region_map(rng: np.random.Generator, plan: SitePlan, size: int) -> np.ndarray:
    """Pixel map of poster-class indices: a dominant class plus a few neighbours."""
    dominant = plan.dominant
    n_others = rng.choice(4, p=[0.2, 0.4, 0.28, 0.12])
    neighbours = NEIGHBOURS[dominant]
    names = list(neighbours)
    weights = np.array([neighbours[n] for n in names], dtype=float)
    others = list(
        rng.choice(names, size=min(n_others, len(names)), replace=False, p=weights / weights.sum())
    )
    present = [dominant, *others]
    targets = np.array([rng.uniform(0.65, 0.95), *rng.dirichlet(np.ones(len(others)))])
    targets[1:] *= 1.0 - targets[0]
    sigma = size * rng.uniform(0.06, 0.16)
    fields = np.stack([_smooth_noise(rng, size, sigma) for _ in present])
    bias = np.log(targets + 1e-6)
    for _ in range(6):  # nudge region sizes towards their targets
        winner = np.argmax(fields + bias[:, None, None], axis=0)
        actual = np.bincount(winner.ravel(), minlength=len(present)) / winner.size
        bias += 0.7 * (np.log(targets + 1e-6) - np.log(actual + 1e-3))
    winner = np.argmax(fields + bias[:, None, None], axis=0)
    class_index = np.array([CLASSES.index(name) for name in present])
    return class_index[winner]


def _pick_code(rng: np.random.Generator, poster_class: str, lat: float) -> int:
    weights = dict(CODE_WEIGHTS[poster_class])
    if lat > 47:  # Mediterranean covers stay south
        for code in (213, 223, 323):
            weights.pop(code, None)
    if lat < 50:
        weights.pop(412, None)
    codes = list(weights)
    w = np.array([weights[c] for c in codes], dtype=float)
    return int(codes[rng.choice(len(codes), p=w / w.sum())])


def _phenology(kind: str, doy: np.ndarray, lat: float, rng: np.random.Generator) -> np.ndarray:
    """Greenness in [0, 1] per date for one seasonal cycle type; later spring further north."""
    shift = 2.0 * (lat - 48.0) + rng.normal(0, 6)
    if kind == "none":
        return np.zeros_like(doy)
    if kind == "evergreen":
        return 0.85 + 0.1 * np.sin(2 * np.pi * (doy - 100 - shift) / 365)
    if kind == "grass":
        return np.clip(0.55 + 0.35 * np.sin(2 * np.pi * (doy - 80 - shift) / 365), 0, 1)
    if kind == "deciduous":
        up, down = 115 + shift, 295 - shift / 2
        return 1 / (1 + np.exp(-(doy - up) / 8)) / (1 + np.exp((doy - down) / 10))
    if kind == "wet":
        return np.clip(0.3 + 0.6 * np.sin(2 * np.pi * (doy - 100 - shift) / 365), 0, 1)
    raise ValueError(f"unknown phenology {kind!r}")


def _crop_phenology(doy: np.ndarray, lat: float, rng: np.random.Generator) -> np.ndarray:
    """One field's crop cycle: winter crops peak in May, summer crops in July; harvest after."""
    shift = 2.0 * (lat - 48.0)
    peak = (140 if rng.random() < 0.5 else 200) + shift + rng.normal(0, 12)
    width = rng.uniform(*appearance.CROP_SEASON_DAYS)
    return rng.uniform(*appearance.CROP_PEAK_GREENNESS) * np.exp(-(((doy - peak) / width) ** 2))


def _texture(rng: np.random.Generator, signature: str, size: int) -> np.ndarray:
    """Multiplicative brightness pattern (median ~1) typical of a cover's spatial structure:
    power-law fields (see `textures`), plus crowns and gaps under forest."""
    if signature in appearance.CANOPY_SIGNATURES:  # crowns and gaps
        crowns = 1 + appearance.CROWN_STRENGTH * _smooth_noise(rng, size, 1.0)
        return crowns * textures.lognormal_texture(rng, size, *appearance.CANOPY_TEXTURE)
    if signature in appearance.SMOOTH_SIGNATURES:
        return textures.lognormal_texture(rng, size, *appearance.SMOOTH_TEXTURE)
    if signature in appearance.OPEN_SIGNATURES:
        return textures.lognormal_texture(rng, size, *appearance.OPEN_TEXTURE)
    return textures.lognormal_texture(rng, size, *appearance.DEFAULT_TEXTURE)


def render_site(
    plan: SitePlan, dates: Sequence[dt.date], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one site: reflectance (T, 4, H, W) float, cloud opacity in percent (T, 1, H, W)
    uint8, CLC code map. Reflectance is capped at 1 but not floored at 0: sensor noise leaves
    some dark pixels slightly negative, as in real surface-reflectance products."""
    rng = np.random.default_rng(plan.seed)
    doy = np.array([d.timetuple().tm_yday + (d.year - 2018) * rng.normal(0, 5) for d in dates])
    months = np.array([d.month for d in dates])
    regions = _region_map(rng, plan, size)
    code_map = np.zeros((size, size), dtype=np.int16)
    reflectance = np.zeros((len(dates), 4, size, size), dtype=np.float32)
    for class_index in np.unique(regions):
        poster_class = CLASSES[class_index]
        mask = regions == class_index
        code = _pick_code(rng, poster_class, plan.lat)
        code_map[mask] = code
        signature = appearance.CODE_SIGNATURE[code]
        low, high, cycle = appearance.SIGNATURES[signature]
        low = np.array(low) * rng.normal(1, appearance.WITHIN_CLASS_SPREAD)
        high = np.array(high) * rng.normal(1, appearance.WITHIN_CLASS_SPREAD)
        if cycle == "crop":
            layer = _fields(rng, size, low, high, doy, plan.lat)
        else:
            green = _phenology(cycle, doy, plan.lat, rng)
            spectrum = low[None] * (1 - green[:, None]) + high[None] * green[:, None]
            gain = np.array(appearance.TEXTURE_BAND_GAIN)[:, None, None]
            texture = _texture(rng, signature, size)[None] ** gain  # (4, H, W)
            layer = spectrum[:, :, None, None] * texture[None]
        if poster_class == "artificial" and signature == "urban":
            layer = _street_grid(rng, size, layer, dense=code in (111, 121, 123))
        if poster_class == "wetlands":  # open water patches inside the marsh
            pools = _smooth_noise(rng, size, 2.0) > rng.uniform(0.5, 1.2)
            water = np.array(appearance.SIGNATURES["water"][0])[None, :, None]
            layer = np.where(pools[None, None], water[..., None], layer)
        reflectance[:, :, mask] = layer[:, :, mask]
    _add_snow(rng, reflectance, regions, months, plan.lat)
    # Relief and soil moisture: a site-wide power-law field, stronger in the visible bands.
    relief = textures.power_law_noise(rng, size, appearance.RELIEF_SLOPE)
    strength = np.array(appearance.RELIEF_STRENGTH) * rng.uniform(*appearance.RELIEF_SCALE)
    lift = np.exp(strength[:, None, None] * relief[None])
    reflectance *= (lift / lift.mean(axis=(1, 2), keepdims=True)).astype(np.float32)[None]
    illumination = rng.normal(1, appearance.ILLUMINATION_SD, (len(dates), 4, 1, 1))
    reflectance *= illumination.astype(np.float32)
    noise = np.array(appearance.SENSOR_NOISE, dtype=np.float32)[None, :, None, None]
    reflectance += noise * rng.standard_normal(reflectance.shape, dtype=np.float32)  # sensor
    qa = _add_clouds(rng, reflectance, size)
    return np.minimum(reflectance, 1), qa, code_map  # relief can lift snow past 1


def _fields(rng, size, low, high, doy, lat) -> np.ndarray:
    """Agricultural parcels: a rotated grid of fields, each with its own crop calendar."""
    u, v = _rotated_coords(rng, size)
    width, height = rng.uniform(25, 70), rng.uniform(15, 40)
    parcel = (u // width).astype(int) * 1000 + (v // height).astype(int)
    ids, inverse = np.unique(parcel, return_inverse=True)
    inverse = inverse.reshape(size, size)
    greens = np.stack([_crop_phenology(doy, lat, rng) for _ in ids], axis=1)  # (T, parcels)
    brightness = rng.uniform(*appearance.PARCEL_BRIGHTNESS, len(ids))
    green = greens[:, inverse]  # (T, H, W)
    layer = (
        low[None, :, None, None] * (1 - green[:, None]) + high[None, :, None, None] * green[:, None]
    )
    layer = layer * brightness[inverse][None, None]
    border = np.minimum(u % width, v % height) < 1.0  # hedgerows and tracks
    layer[:, :, border] = np.array(appearance.SIGNATURES["grass"][1])[None, :, None]
    return layer * (1 + 0.04 * _smooth_noise(rng, size, 1.5))[None, None]


def _street_grid(rng, size, layer, dense: bool) -> np.ndarray:
    """Built-up blocks separated by roads; sparse fabric keeps gardens between buildings."""
    u, v = _rotated_coords(rng, size)
    block = rng.uniform(18, 40)
    road = rng.uniform(2.5, 4.5)
    roads = (u % block < road) | (v % block < road)
    roofs = rng.uniform(0.75, 1.45, 4096)[((u // block) * 64 + (v // block)).astype(int) % 4096]
    layer = layer * roofs[None, None]
    if not dense:
        gardens = _smooth_noise(rng, size, 1.5) > 0.3
        dormant, full, _ = appearance.SIGNATURES["grass"]
        grass = (np.array(dormant) + full) / 2  # mown, dry
        layer[:, :, gardens] = grass[None, :, None]
    layer[:, :, roads] = appearance.ROAD[None, :, None]
    return layer


def _add_snow(rng, reflectance, regions, months, lat) -> None:
    """Partial winter snow cover north of ~55 N (not on water or under forest canopy)."""
    if lat < 55:
        return
    open_land = ~np.isin(regions, [CLASSES.index("water"), CLASSES.index("forest")])
    for t in np.flatnonzero(np.isin(months, (12, 1, 2, 3))):
        if rng.random() < appearance.SNOW_PROBABILITY:
            noise = _smooth_noise(rng, regions.shape[0], appearance.SNOW_SMOOTHING_PX)
            cover = np.clip(noise + rng.uniform(0, 1.5), 0, 1)
            cover = (cover * open_land)[None]
            reflectance[t] = reflectance[t] * (1 - cover) + appearance.SNOW[:, None, None] * cover


def _add_clouds(rng, reflectance, size) -> np.ndarray:
    """Occasional haze or cloud per date; returns its opacity in percent (0-100)."""
    qa = np.zeros((reflectance.shape[0], 1, size, size), dtype=np.uint8)
    for t in range(reflectance.shape[0]):
        draw = rng.random()
        if draw < 0.02:  # a cloud patch (rare: Planet Fusion is gap-filled)
            opacity = np.clip(_smooth_noise(rng, size, size / 6) - 0.3, 0, 1) * rng.uniform(
                0.5, 0.95
            )
        elif draw < 0.05:  # thin haze over the whole site
            opacity = np.full((size, size), rng.uniform(0.05, 0.15))
        else:
            continue
        reflectance[t] = reflectance[t] * (1 - opacity) + appearance.CLOUD[:, None, None] * opacity
        qa[t, 0] = np.round(opacity * 100).astype(np.uint8)
    return qa


def _write_raster(
    path: Path, data: np.ndarray, plan: SitePlan, compress: str | None,
    descriptions: Sequence[str] | None = None, nodata: float | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": data.shape[-1],
        "height": data.shape[-2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": f"EPSG:{plan.epsg}",
        "transform": from_origin(plan.left, plan.top, layout.PIXEL_SIZE_M, layout.PIXEL_SIZE_M),
        "nodata": nodata,
    }
    if compress:
        profile.update(compress=compress, predictor=2)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = tuple(descriptions)


def stored_values(reflectance: np.ndarray, dtype: str = "uint16") -> np.ndarray:
    """Reflectance as the corpus stores it: times REFLECTANCE_SCALE, rounded.

    uint16: at least 1, so 0 is left for nodata, as in Sentinel-2 products (sensor noise over
    dark water would otherwise store 0s that a reader told `nodata=0` masks). int16: negative
    values kept, as a surface-reflectance product stores them; -32768 is left for nodata.
    """
    scaled = np.round(reflectance * layout.REFLECTANCE_SCALE)
    if dtype == "int16":
        return np.clip(scaled, INT16_NODATA + 1, 32767).astype(np.int16)
    return np.clip(scaled, 1, 65535).astype(np.uint16)


def qa_layers(opacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PF-QA (T, 3, H, W) int16 from the cloud opacity (T, 1, H, W, percent): per date a signed
    number of days to the nearest real observation (0 on about a third of the dates; further
    away under a cloud patch), 0 in band 2, and the cloud mask (opacity of 50 % or more)."""
    n_dates = opacity.shape[0]
    cloudy = opacity[:, 0] >= 50
    qa = np.zeros((n_dates, QA_BAND_COUNT, *opacity.shape[2:]), dtype=np.int16)
    observed = rng.random(n_dates) < 1 / 3
    days = np.where(observed, 0, rng.integers(1, 16, n_dates) * rng.choice([-1, 1], n_dates))
    gap = np.where(days < 0, -10, 10)[:, None, None]  # no observation under the cloud
    qa[:, QA_BANDS["days_to_observation"] - 1] = days[:, None, None] + np.where(cloudy, gap, 0)
    qa[:, QA_BANDS["cloud_mask"] - 1] = cloudy
    return qa


def label_shares(code_map: np.ndarray) -> dict[str, float]:
    """A drawn site's `clc_` shares as its label file holds them: percent (0-100) of the area."""
    counts = {code: int((code_map == code).sum()) for code in CLC_CODES}
    return {f"clc_{code}": round(100.0 * n / code_map.size, 4) for code, n in counts.items()}


def write_site(
    root: Path, plan: SitePlan, dates: Sequence[dt.date], size: int, compress: str | None,
    dtype: str = "int16",
) -> dict:
    """Render and write one site's PF-SR, PF-QA and label files; return its label feature.

    Drawn apart from the pixels (their own seeded stream), so the imagery is the same in
    either dtype: the QA layers, the int16 nodata rows, and whether the label file is a bare
    Feature or a one-feature collection (about half each, as both forms occur).
    """
    reflectance, opacity, code_map = render_site(plan, dates, size)
    stored = stored_values(reflectance, dtype)
    files_rng = np.random.default_rng([plan.seed, 1])
    qa = qa_layers(opacity, files_rng)
    nodata = None
    if dtype == "int16":
        nodata = INT16_NODATA
        stored[files_rng.random(len(dates)) < NODATA_ROW_PROBABILITY, :, 0, :] = INT16_NODATA
    for t, date in enumerate(dates):
        _write_raster(layout.raster_path(root, plan.sample_id, date, layout.PF_SR), stored[t],
                      plan, compress, layout.BANDS, nodata)
        _write_raster(layout.raster_path(root, plan.sample_id, date, layout.PF_QA), qa[t],
                      plan, compress)
    shares = label_shares(code_map)  # percentages (0-100); readers accept 0-1 too
    extent = size * layout.PIXEL_SIZE_M
    ring = geo.footprint_lonlat(
        plan.left, plan.top - extent, plan.left + extent, plan.top, plan.epsg
    )
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"sample_id": plan.sample_id, **shares},
    }
    path = layout.label_path(root, plan.sample_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    bare = files_rng.random() < 0.5
    path.write_text(json.dumps(feature if bare else
                               {"type": "FeatureCollection", "features": [feature]}))
    return feature


def _write_sites(root: Path, plans: list[SitePlan], dates, size, compress, dtype) -> list[dict]:
    return [write_site(root, plan, dates, size, compress, dtype) for plan in plans]


def generate_corpus(
    out: str | Path,
    n_sites: int = 1000,
    seed: int = 0,
    size: int = layout.SITE_SIZE_PX,
    dates: str | Sequence[dt.date | str] = "monthly",
    compress: str | None = "deflate",
    workers: int = 2,
    progress: bool = True,
    dtype: str = "int16",
) -> Path:
    """Write a synthetic corpus in the RapidAI4EO layout under `out` and return its path.

    `dtype` 'int16' writes PF-SR as the real product most likely stores it (see the module
    docstring); 'uint16' writes values of at least 1 with no nodata tag and no nodata rows.
    An existing complete corpus with the same settings is kept as it is. A folder left
    by an interrupted generation is regenerated; any other non-empty folder is refused,
    so nothing that is not ours is ever overwritten.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be at least 1, got {n_sites}")
    if not 8 <= size <= 1024:
        raise ValueError(f"size must be between 8 and 1024 px, got {size}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    chosen_dates = synth_dates(dates)
    settings = SynthSettings(
        n_sites, seed, size, tuple(d.isoformat() for d in chosen_dates), compress, dtype
    )
    root = Path(out)
    marker = root / MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("complete") and recorded.get("settings") == _jsonable(settings):
            log.info("synthetic corpus already complete at %s; keeping it", root)
            return root
        log.info("regenerating synthetic corpus at %s (incomplete or other settings)", root)
        for name in ("imagery", "labels", "resources"):
            shutil.rmtree(root / name, ignore_errors=True)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"refusing to write a synthetic corpus into {root}: the folder is not empty and "
            f"has no {MARKER}. Choose an empty or new --out folder."
        )
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"complete": False, "settings": _jsonable(settings)})

    plans = plan_sites(n_sites, seed, size)
    chunks = [plans[i : i + 16] for i in range(0, len(plans), 16)]
    features: list[dict] = []
    bar = tqdm(total=n_sites, desc="synthetic sites", unit="site", disable=not progress)
    if workers <= 1:
        for chunk in chunks:
            features.extend(_write_sites(root, chunk, chosen_dates, size, compress, dtype))
            bar.update(len(chunk))
    else:
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            jobs = [
                pool.submit(_write_sites, root, chunk, chosen_dates, size, compress, dtype)
                for chunk in chunks
            ]
            for job, chunk in zip(jobs, chunks, strict=True):
                features.extend(job.result())
                bar.update(len(chunk))
    bar.close()
    _write_resources(root, features)
    write_json_atomic(marker, {"complete": True, "settings": _jsonable(settings)})
    log.info("wrote %d synthetic sites x %d dates to %s", n_sites, len(chosen_dates), root)
    return root


def _jsonable(settings: SynthSettings) -> dict:
    return json.loads(json.dumps(asdict(settings)))


def _write_resources(root: Path, features: list[dict]) -> None:
    """The corpus-wide label table and site geometries, as in the real `resources/`."""
    resources = root / "resources"
    resources.mkdir(exist_ok=True)
    table = pd.DataFrame(
        [
            {"sample_id": f["properties"]["sample_id"]}
            | {c: f["properties"][c] for c in SHARE_COLUMNS}
            for f in features
        ]
    )
    with atomic_path(root / layout.LABELS_CSV) as tmp:
        # mtime 0: identical corpora for identical seeds, byte for byte
        table.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0})
    geometries = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": f["geometry"],
                "properties": {"sample_id": f["properties"]["sample_id"]},
            }
            for f in features
        ],
    }
    with atomic_path(root / layout.GEOMETRIES_GEOJSON) as tmp:
        tmp.write_bytes(gzip.compress(json.dumps(geometries).encode(), mtime=0))
