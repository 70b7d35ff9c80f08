"""Power-law textures of the synthetic corpus: their spectral slope, scale and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from rapid_utils import chip_statistics
from rapid_utils.corpus import textures


@pytest.mark.parametrize("slope", [-2.0, -2.6, -3.0])
def test_power_law_noise_has_its_spectral_slope(slope: float) -> None:
    rng = np.random.default_rng(0)
    fields = np.stack([textures.power_law_noise(rng, 64, slope) for _ in range(16)])
    assert np.median(chip_statistics.spectral_slopes(fields)) == pytest.approx(slope, abs=0.15)
    assert np.allclose(fields.mean(axis=(1, 2)), 0, atol=1e-9)
    assert np.allclose(fields.std(axis=(1, 2)), 1, atol=1e-6)


def test_textures_are_seeded_positive_and_centred_on_one() -> None:
    first = textures.lognormal_texture(np.random.default_rng(5), 32, 0.2)
    again = textures.lognormal_texture(np.random.default_rng(5), 32, 0.2)
    other = textures.lognormal_texture(np.random.default_rng(6), 32, 0.2)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert (first > 0).all() and np.median(np.log(first)) == pytest.approx(0, abs=0.1)
    assert np.log(first).std() == pytest.approx(0.2, rel=1e-6)
