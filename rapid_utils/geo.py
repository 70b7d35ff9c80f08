"""Geographic helpers: UTM zones, site footprints, a land mask of Europe and CLC coverage."""

from __future__ import annotations

import functools

import numpy as np
from pyproj import Transformer

# Longitude/latitude window used for the sample map and for placing synthetic sites.
EUROPE_EXTENT: tuple[float, float, float, float] = (-11.0, 32.0, 35.0, 71.0)  # W, E, S, N


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


# Where CORINE Land Cover has no map inside EUROPE_EXTENT: CLC covers the EEA-39 countries
# (and the UK), not North Africa nor Russia, Belarus, Ukraine or Moldova. A synthetic site
# there would carry CLC labels that no real site could have. Coarse rings (lon, lat), a few
# km off the borders at worst; islands of EEA-39 countries near them stay outside the rings
# (Pantelleria, Lampedusa, Malta, Vardø). Tiny non-members (Andorra) are not excluded.
NON_EEA39_RINGS: dict[str, tuple[tuple[float, float], ...]] = {
    # Morocco, Algeria, Tunisia: south of the Alboran Sea and the Sicily channel
    "north_africa": ((-12.0, 30.0), (-12.0, 35.95), (-1.5, 35.95), (-1.5, 37.0), (3.0, 37.0),
                     (3.0, 37.45), (11.2, 37.45), (11.2, 30.0)),
    # Russia (Kola, Karelia, Leningrad, Pskov, Smolensk), Belarus, Ukraine, Moldova: east of
    # the Norwegian, Finnish, Baltic, Polish, Slovak, Hungarian and Romanian borders
    "east": ((33.0, 69.95), (31.0, 69.8), (28.9, 69.05), (28.4, 68.5), (30.0, 67.7),
             (29.1, 66.9), (30.1, 65.7), (29.7, 64.8), (30.5, 64.0), (31.6, 62.9), (30.0, 61.6),
             (27.8, 60.55), (28.25, 59.4), (27.5, 58.9), (27.6, 57.6), (28.2, 56.9),
             (28.2, 56.1), (26.6, 55.7), (26.2, 54.9), (25.6, 54.3), (23.5, 53.9), (23.9, 52.7),
             (23.6, 52.1), (24.1, 50.8), (22.6, 49.2), (22.15, 48.4), (22.9, 47.95),
             (26.6, 48.25), (28.2, 46.6), (28.2, 45.45), (29.7, 45.2), (33.0, 45.0)),
    "kaliningrad": ((19.6, 54.45), (22.8, 54.35), (22.9, 54.9), (21.2, 55.35),
                    (20.5, 54.95)),
}


def _in_ring(lon: np.ndarray, lat: np.ndarray, ring: tuple[tuple[float, float], ...]
             ) -> np.ndarray:
    """Even-odd rule: whether points fall inside a closed ring of (lon, lat) vertices."""
    xs, ys = np.array(ring).T
    inside = np.zeros(np.shape(lon), dtype=bool)
    for x0, y0, x1, y1 in zip(xs, ys, np.roll(xs, -1), np.roll(ys, -1), strict=True):
        crosses = (y0 > lat) != (y1 > lat)
        with np.errstate(invalid="ignore", divide="ignore"):
            x_at = x0 + (lat - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (lon < x_at)
    return inside


def in_clc_coverage(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """True where WGS84 points fall on land that CORINE maps (EEA-39 countries, coarsely)."""
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    outside = np.zeros(np.shape(lon), dtype=bool)
    for ring in NON_EEA39_RINGS.values():
        outside |= _in_ring(lon, lat, ring)
    return is_land(lon, lat) & ~outside
