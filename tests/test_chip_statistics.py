"""Chip statistics on hand-made cases, and the bootstrap tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from rapid_utils import chip_statistics


def power_law_image(side: int, slope: float, seed: int) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as frequency ** slope (random phases)."""
    rng = np.random.default_rng(seed)
    frequency = np.fft.fftfreq(side)
    radius = np.hypot(*np.meshgrid(frequency, frequency))
    radius[0, 0] = 1.0
    amplitude = radius ** (slope / 2)
    amplitude[0, 0] = 0.0
    spectrum = amplitude * np.exp(2j * np.pi * rng.random((side, side)))
    return np.real(np.fft.ifft2(spectrum))


@pytest.mark.parametrize("slope", [0.0, -2.0, -3.0])
def test_spectral_slope_of_power_law_images_is_recovered(slope: float) -> None:
    images = np.stack([power_law_image(64, slope, seed) for seed in range(8)])
    assert np.median(chip_statistics.spectral_slopes(images)) == pytest.approx(slope, abs=0.15)
    # an offset and a gain change nothing: the mean is removed and the slope is log-log
    assert chip_statistics.spectral_slopes(0.3 + 5 * images) == pytest.approx(
        chip_statistics.spectral_slopes(images), abs=1e-9)


def test_constant_image_has_zero_gradient_and_zero_heterogeneity() -> None:
    constant = np.full((2, 4, 16, 16), 0.2)
    assert np.all(chip_statistics.gradient_magnitude(constant) == 0)
    assert chip_statistics.heterogeneity(constant) == pytest.approx(np.zeros((2, 4)), abs=1e-12)
    ramp = np.tile(np.arange(16.0) * 0.01, (16, 1))  # 0.01 per pixel along x
    assert chip_statistics.gradient_magnitude(ramp) == pytest.approx(np.full((16, 16), 0.01))
    assert np.isnan(chip_statistics.heterogeneity(np.zeros((8, 8))))  # no mean to divide by


def test_pooled_quantiles_of_a_known_array() -> None:
    band = np.random.default_rng(0).permutation(np.arange(101.0)).reshape(1, 101)  # one chip
    chips = np.stack([band, 10 * band], axis=1)  # (1, 2, 101): two bands
    assert chip_statistics.pooled_quantiles(chips) == pytest.approx(
        np.array([[5, 50], [25, 250], [50, 500], [75, 750], [95, 950]]))
    split = band.reshape(1, 101)[:, :100].reshape(4, 25)  # pooled over 4 chips of 25 px
    assert chip_statistics.pooled_quantiles(split) == pytest.approx(
        np.percentile(band[0, :100], chip_statistics.QUANTILES))


def test_pixel_sample_takes_the_same_pixels_in_every_band() -> None:
    images = np.arange(2 * 4 * 8 * 8, dtype=float).reshape(2, 4, 8, 8)
    sample = chip_statistics.pixel_sample(images, per_chip=10, seed=1)
    assert sample.shape == (2, 4, 10)
    assert np.all(np.diff(sample, axis=1) == 64)  # band k + 1 is band k + 64: same positions
    assert chip_statistics.pixel_sample(images, per_chip=1000).shape == (2, 4, 64)  # all, no more


def test_ndvi_of_known_pixels() -> None:
    image = np.zeros((1, 4, 1, 3))
    image[0, 2] = [0.1, 0.2, 0.0]  # red
    image[0, 3] = [0.5, 0.2, 0.0]  # nir
    ndvi = chip_statistics.ndvi(image)[0, 0]
    assert ndvi[:2] == pytest.approx([0.4 / 0.6, 0.0]) and np.isnan(ndvi[2])


def test_tolerance_comes_from_the_real_spread() -> None:
    real = np.random.default_rng(0).normal(1.0, 0.1, (400, 1))

    def mean(values: np.ndarray) -> np.ndarray:
        return values.mean(axis=0)

    few, many = (chip_statistics.bootstrap_tolerance(real, mean, n, seed=1) for n in (10, 400))
    assert few[0] == pytest.approx(1.96 * 0.1 / np.sqrt(10), rel=0.25)  # the sampling spread
    assert many[0] < few[0]  # a larger embedded sample must come closer
    assert chip_statistics.bootstrap_tolerance(np.ones((5, 2)), mean, 3)[0] == 0  # no slack


@pytest.mark.parametrize("shape", [(40, 4, 30), (25, 17)])
def test_quantile_tolerance_matches_the_plain_bootstrap(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    real = rng.lognormal(-2.0, 0.8, shape).astype(np.float32)
    real[rng.random(shape) < 0.05] = np.nan  # nodata pixels are left out, as nanpercentile does
    real[:, ..., :3] = np.round(real[:, ..., :3], 2)  # ties
    for n_chips in (7, 60):
        fast = chip_statistics.bootstrap_quantile_tolerance(real, n_chips, n_draws=50, seed=4)
        plain = chip_statistics.bootstrap_tolerance(
            real, chip_statistics.pooled_quantiles, n_chips, n_draws=50, seed=4)
        assert fast.shape == plain.shape == (5, *shape[1:-1])
        assert fast == pytest.approx(plain, rel=1e-5, abs=1e-7)
        assert np.all(fast > 0)
