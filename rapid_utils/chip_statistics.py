"""Statistics of chip sets, (N, C, S, S) reflectance: NDVI, pixel samples and their pooled
quantiles, the power spectrum's slope, gradient magnitude, heterogeneity, and the bootstrap
tolerances that say how far a sample of real chips falls from all of them by chance.

`realism` measures the embedded corpus against real chips with them; they know nothing of
either side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rapid_utils.corpus import layout

QUANTILES = (5, 25, 50, 75, 95)
PIXELS_PER_CHIP = 256  # pixels drawn per chip for pooled quantiles (all of a smaller chip)
TOLERANCE_LEVEL = 0.95
N_DRAWS = 200  # bootstrap draws per tolerance


def ndvi_of(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Per-pixel NDVI, (nir - red) / (nir + red), of same-shaped arrays; NaN where either band
    is NaN or their sum is 0. The one formula: `ndvi` and `exploration.ndvi` both use it."""
    total = nir + red
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total != 0, (nir - red) / total, np.nan)


def ndvi(images: np.ndarray) -> np.ndarray:
    """Per-pixel NDVI (N, S, S) of (N, 4, S, S) reflectance; NaN where NIR + red is 0."""
    return ndvi_of(images[:, layout.BANDS.index("red")], images[:, layout.BANDS.index("nir")])


def pixel_sample(values: np.ndarray, per_chip: int = PIXELS_PER_CHIP, seed: int = 0
                 ) -> np.ndarray:
    """(N, ..., P) seeded random pixels of each chip of (N, ..., S, S) values (the same
    positions in every band of a chip), so that every chip weighs the same in pooled quantiles."""
    flat = values.reshape(*values.shape[:-2], -1)
    n_pixels = flat.shape[-1]
    keys = np.random.default_rng(seed).random((values.shape[0], n_pixels))
    chosen = np.argsort(keys, axis=1)[:, :min(per_chip, n_pixels)]
    chosen = chosen.reshape(chosen.shape[0], *([1] * (flat.ndim - 2)), chosen.shape[1])
    return np.take_along_axis(flat, chosen, axis=-1)


def pooled_quantiles(values: np.ndarray, quantiles: Sequence[float] = QUANTILES) -> np.ndarray:
    """Quantiles (%) of (N, C, P) or (N, P) values, pooled over chips and pixels: (Q, C) or (Q,)."""
    if values.ndim == 2:
        return np.nanpercentile(values, quantiles)
    pooled = np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)
    return np.nanpercentile(pooled, quantiles, axis=1)


def spectral_slopes(images: np.ndarray) -> np.ndarray:
    """Log-log slope of each image's radially averaged power spectrum, (..., S, S) -> (...).

    Mean removed (NaN pixels set to it) and a Hann window applied against edge leakage;
    power is averaged in rings of integer radius 1 ... S/2 (frequency in cycles per pixel)
    and a line is fitted to log10 power against log10 frequency. White noise gives about 0;
    natural images about -2 to -3.
    """
    side = images.shape[-1]
    centred = images - np.nanmean(images, axis=(-2, -1), keepdims=True)
    centred = np.nan_to_num(centred) * np.outer(np.hanning(side), np.hanning(side))
    power = np.abs(np.fft.fft2(centred)) ** 2
    frequency = np.fft.fftfreq(side)
    ring = np.rint(np.hypot(*np.meshgrid(frequency, frequency)) * side).astype(int).ravel()
    rings = np.arange(1, side // 2 + 1)
    members = (ring[:, None] == rings[None]).astype(float)  # (S*S, K)
    radial = power.reshape(*power.shape[:-2], -1) @ members / members.sum(axis=0)
    x = np.log10(rings / side)
    y = np.log10(np.maximum(radial, np.finfo(float).tiny))
    x_centred = x - x.mean()
    return ((y - y.mean(axis=-1, keepdims=True)) @ x_centred) / (x_centred @ x_centred)


def gradient_magnitude(images: np.ndarray) -> np.ndarray:
    """Per-pixel gradient magnitude of (..., S, S) images, in their units per pixel."""
    d_y, d_x = np.gradient(images, axis=(-2, -1))
    return np.hypot(d_y, d_x)


def heterogeneity(images: np.ndarray) -> np.ndarray:
    """Within-image std / mean of (..., S, S) images (NaN-aware; NaN where the mean is 0)."""
    mean = np.nanmean(images, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean != 0, np.nanstd(images, axis=(-2, -1)) / mean, np.nan)


def bootstrap_tolerance(real: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                        n_chips: int, n_draws: int = N_DRAWS, seed: int = 0,
                        level: float = TOLERANCE_LEVEL) -> np.ndarray:
    """The `level` quantile of |statistic(n_chips real chips drawn with replacement) -
    statistic(all real chips)|: the distance a real sample of that size reaches by chance.

    `real` holds one entry per chip along its first axis; `statistic` maps such an array to
    an array of statistics, and the tolerance has its shape.
    """
    rng = np.random.default_rng(seed)
    full = statistic(real)
    draws = np.stack([statistic(real[rng.integers(0, len(real), n_chips)])
                      for _ in range(n_draws)])
    return np.quantile(np.abs(draws - full), level, axis=0)


def bootstrap_quantile_tolerance(real: np.ndarray, n_chips: int, n_draws: int = N_DRAWS,
                                 seed: int = 0, level: float = TOLERANCE_LEVEL,
                                 quantiles: Sequence[float] = QUANTILES) -> np.ndarray:
    """`bootstrap_tolerance(real, pooled_quantiles, ...)`: the same draws and, to rounding, the
    same tolerances, from one sort of the real pixels instead of a partition per draw.

    A draw that takes chip i m_i times pools each of chip i's pixels m_i times; so in the
    sorted real pixels, the running sum of those multiplicities gives each pixel's ranks in the
    draw's sorted pool, and a quantile's two neighbouring order statistics are found by a
    search. Written here because numpy's quantile takes weights only for its inverted-CDF
    method, not for the linear one that `pooled_quantiles` uses.
    """
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, len(real), n_chips), minlength=len(real))
             for _ in range(n_draws)]
    per_band = real[:, None] if real.ndim == 2 else real  # (N, C, P)
    chip_of_pixel = np.repeat(np.arange(len(real)), per_band.shape[2])
    fraction = np.asarray(quantiles, dtype=float) / 100
    resampled = np.full((n_draws, len(fraction), per_band.shape[1]), np.nan)
    for band in range(per_band.shape[1]):
        values = per_band[:, band].reshape(-1)
        present = ~np.isnan(values)
        kept, kept_chip = values[present], chip_of_pixel[present]
        order = np.argsort(kept, kind="stable")
        ordered, ordered_chip = kept[order], kept_chip[order]
        for k, counts in enumerate(draws):
            ranks = np.cumsum(counts[ordered_chip])  # ranks[j]: pooled pixels <= ordered[j]
            if ranks.size == 0 or ranks[-1] == 0:
                continue  # only NaN in this draw, as pooled_quantiles gives
            position = fraction * (ranks[-1] - 1)
            below = np.floor(position)
            neighbours = np.stack([below, np.minimum(below + 1, ranks[-1] - 1)])
            low, high = ordered[np.searchsorted(ranks, neighbours, side="right")]
            resampled[k, :, band] = _lerp(low, high, position - below)
    if real.ndim == 2:
        resampled = resampled[..., 0]
    return np.quantile(np.abs(resampled - pooled_quantiles(real, quantiles)), level, axis=0)


def _lerp(low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Linear interpolation as numpy's quantile does it (from the nearer end)."""
    step = high - low
    return np.where(weight >= 0.5, high - step * (1 - weight), low + step * weight)
