"""Geographic helpers: UTM zones, site footprints and a land mask of Europe."""

from __future__ import annotations

import functools

import numpy as np
from pyproj import Transformer

# Longitude/latitude window used for the sample map and for placing synthetic sites.
EUROPE_EXTENT: tuple[float, float, float, float] = (-11.0, 32.0, 35.0, 71.0)  # W, E, S, N
TILE_SIZE_M = 25_000  # synthetic convention: `{E}E-{N}N` counts 25 km UTM blocks


def utm_zone(lon: float) -> int:
    """UTM zone number of a longitude (no Norway/Svalbard exceptions, as EPSG:326xx grids)."""
    return int((lon + 180.0) // 6.0) % 60 + 1


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS84/UTM zone containing a point (326xx north, 327xx south)."""
    return (32600 if lat >= 0 else 32700) + utm_zone(lon)


@functools.lru_cache(maxsize=64)
def _transformer(src_epsg: int, dst_epsg: int) -> Transformer:
    return Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)


def to_utm(lon: float, lat: float, epsg: int) -> tuple[float, float]:
    """Project WGS84 lon/lat to easting/northing in metres."""
    return _transformer(4326, epsg).transform(lon, lat)


def to_lonlat(x: np.ndarray, y: np.ndarray, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """Unproject UTM coordinates to WGS84 lon/lat."""
    return _transformer(epsg, 4326).transform(x, y)


def tile_name(easting: float, northing: float) -> str:
    """Tile label such as `18E-242N` from UTM coordinates (25 km blocks; synthetic convention)."""
    return f"{int(easting // TILE_SIZE_M)}E-{int(northing // TILE_SIZE_M)}N"


def footprint_lonlat(
    left: float, bottom: float, right: float, top: float, epsg: int
) -> list[list[float]]:
    """Closed WGS84 ring [[lon, lat], ...] of a UTM rectangle, for GeoJSON polygons."""
    xs = np.array([left, right, right, left, left])
    ys = np.array([bottom, bottom, top, top, bottom])
    lons, lats = to_lonlat(xs, ys, epsg)
    return [[round(float(lo), 7), round(float(la), 7)] for lo, la in zip(lons, lats, strict=True)]


@functools.lru_cache(maxsize=1)
def europe_land_mask(
    resolution_deg: float = 1 / 30,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Boolean land mask over EUROPE_EXTENT (north up, ~3.5 km cells) and its extent.

    Samples the 1 km GLOBE land mask shipped by `global-land-mask` at cell centres. That
    package holds the whole globe in memory once imported, so the window is computed once
    per process and cached.
    """
    from global_land_mask import globe

    west, east, south, north = EUROPE_EXTENT
    lats = np.arange(north - resolution_deg / 2, south, -resolution_deg)
    lons = np.arange(west + resolution_deg / 2, east, resolution_deg)
    lat_grid, lon_grid = np.meshgrid(lats, lons, indexing="ij")
    return globe.is_land(lat_grid, lon_grid), EUROPE_EXTENT


def is_land(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """True where WGS84 points fall on land (per the cached European mask)."""
    mask, (west, east, south, north) = europe_land_mask()
    n_rows, n_cols = mask.shape
    row = ((north - np.asarray(lat)) / (north - south) * n_rows).astype(int)
    col = ((np.asarray(lon) - west) / (east - west) * n_cols).astype(int)
    inside = (row >= 0) & (row < n_rows) & (col >= 0) & (col < n_cols)
    out = np.zeros(np.shape(lon), dtype=bool)
    out[inside] = mask[row[inside], col[inside]]
    return out
