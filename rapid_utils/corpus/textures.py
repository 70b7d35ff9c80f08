"""Power-law (fractal) textures for the synthetic corpus.

Real imagery has power spectra that fall as a power of spatial frequency, with log-log
slopes near -2.5 in every band (see `chip_statistics.spectral_slopes`): most of its variation
sits in large structures (soil moisture, relief, stands, parcels) and little in single pixels.
Gaussian smoothed noise has no such spectrum, so the generator draws its brightness patterns
here. Kept apart from `synthetic.py` so that module stays about what a site holds, not how
noise is made.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=16)
def _amplitude(size: int, slope: float) -> np.ndarray:
    """FFT amplitude whose power falls as frequency ** slope (0 at the mean)."""
    radius = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :])
    radius[0, 0] = 1.0
    amplitude = radius ** (slope / 2.0)
    amplitude[0, 0] = 0.0
    return amplitude


def power_law_noise(rng: np.random.Generator, size: int, slope: float = -2.6) -> np.ndarray:
    """A (size, size) field of mean 0 and std 1 whose power spectrum has the log-log `slope`."""
    white = np.fft.rfft2(rng.standard_normal((size, size)))
    field = np.fft.irfft2(white * _amplitude(size, slope), s=(size, size))
    return (field - field.mean()) / (field.std() + 1e-12)


def lognormal_texture(rng: np.random.Generator, size: int, strength: float,
                      slope: float = -2.6) -> np.ndarray:
    """Multiplicative brightness pattern exp(strength * power-law noise), median 1, positive."""
    return np.exp(strength * power_law_noise(rng, size, slope))
