"""Band statistics: the one mean/std arithmetic every corpus kind uses."""

from __future__ import annotations

import numpy as np
import pytest

from rapid_utils.bandstats import PixelSums, mean_std


def test_pixel_sums_give_the_mean_and_std_of_the_valid_pixels_only() -> None:
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 5000, (4, 8, 8)).astype(np.uint16) for _ in range(3)]
    masks = [rng.random((4, 8, 8)) < 0.2 for _ in range(3)]
    sums = PixelSums()
    for chip, mask in zip(chips, masks, strict=True):
        sums.add(np.ma.MaskedArray(chip, mask=mask))
    mean, std = sums.mean_std()
    for band in range(4):
        valid = np.concatenate([c[band][~m[band]] for c, m in zip(chips, masks, strict=True)])
        assert mean[band] == pytest.approx(valid.mean())
        assert std[band] == pytest.approx(valid.std())
    assert sums.count.tolist() == [sum(int((~m[b]).sum()) for m in masks) for b in range(4)]


def test_a_constant_band_gets_the_floor_not_zero() -> None:
    mean, std = mean_std(np.array([20.0]), np.array([200.0]), np.array([2.0]))  # 10, 10
    assert mean.tolist() == [10.0] and std.tolist() == [pytest.approx(1e-6)]
