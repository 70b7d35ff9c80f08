"""Batched multispectral augmentations: per-sample draws, repeatability, exact geometry, no clip."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rapid_utils import augment as augment_module
from rapid_utils.augment import (
    VIEW1,
    VIEW2,
    ViewConfig,
    augment,
    byol_views,
    draw_params,
    gaussian_blur,
)

# Everything off: only the geometric parts a test switches on act.
PLAIN = ViewConfig(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, rotate=False, jitter_p=0.0, blur_p=0.0
)


def identical_batch(n: int = 8, channels: int = 4, size: int = 16) -> torch.Tensor:
    """`n` copies of one random image."""
    image = torch.rand(channels, size, size, generator=torch.Generator().manual_seed(9))
    return image.expand(n, -1, -1, -1).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtype(dtype: torch.dtype) -> None:
    batch = torch.randn(5, 4, 20, 20, dtype=dtype)
    view1, view2 = byol_views(batch, torch.Generator().manual_seed(0), size=12)
    assert view1.shape == view2.shape == (5, 4, 12, 12)
    assert view1.dtype == view2.dtype == dtype
    assert augment(torch.randn(3, 6, 10, 14), VIEW2).shape == (3, 6, 10, 14)  # any band count


def test_same_seed_same_views_other_seed_other_views() -> None:
    batch = torch.randn(4, 4, 16, 16)
    first = byol_views(batch, torch.Generator().manual_seed(1))
    again = byol_views(batch, torch.Generator().manual_seed(1))
    other = byol_views(batch, torch.Generator().manual_seed(2))
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(first[0], other[0])


def test_samples_are_augmented_independently() -> None:
    view1, view2 = byol_views(identical_batch(), torch.Generator().manual_seed(3))
    for view in (view1, view2):
        for i in range(len(view)):
            for j in range(i + 1, len(view)):
                assert not torch.allclose(view[i], view[j]), (i, j)
    # and each flip/rotation on its own is drawn per sample too
    flips = augment(identical_batch(), replace(PLAIN, flip_p=0.5), torch.Generator().manual_seed(4))
    assert len({tuple(v.flatten().tolist()) for v in flips}) > 1


def test_plain_config_is_the_identity() -> None:
    batch = torch.randn(3, 4, 16, 16)
    torch.testing.assert_close(augment(batch, PLAIN), batch)


def test_flips_and_quarter_turns_are_exact() -> None:
    batch = identical_batch(n=16)
    image = batch[0]
    flipped = augment(batch, replace(PLAIN, flip_p=1.0))
    torch.testing.assert_close(flipped, batch.flip(-1, -2))
    turned = augment(batch, replace(PLAIN, rotate=True), torch.Generator().manual_seed(5))
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    seen = set()
    for view in turned:
        matches = [k for k, r in enumerate(rotations) if torch.allclose(view, r, atol=1e-5)]
        assert len(matches) == 1
        seen.update(matches)
    assert seen == {0, 1, 2, 3}


def test_jitter_does_not_clip() -> None:
    batch = torch.rand(64, 4, 8, 8) * 0.9 + 0.05  # reflectance inside [0, 1]
    strong = replace(PLAIN, jitter_p=1.0, brightness=0.5, contrast=0.5)
    out = augment(batch, strong, torch.Generator().manual_seed(6))
    assert out.min() < 0 and out.max() > 1
    negative = batch - 2  # normalised data below zero passes through untouched
    torch.testing.assert_close(augment(negative, PLAIN), negative)


def test_jitter_is_per_band() -> None:
    out = augment(identical_batch(n=1), replace(PLAIN, jitter_p=1.0), torch.Generator())
    shifts = (out[0] - identical_batch(n=1)[0]).mean(dim=(-2, -1))
    assert len(set(shifts.tolist())) == 4


def test_blur_probabilities() -> None:
    generator = torch.Generator().manual_seed(7)
    n = 4000
    assert draw_params(n, 4, (32, 32), VIEW1, generator).blur.all()
    share = draw_params(n, 4, (32, 32), VIEW2, generator).blur.float().mean().item()
    assert share == pytest.approx(0.1, abs=0.02)  # ~4 standard errors
    jitter = draw_params(n, 4, (32, 32), VIEW2, generator).jitter.float().mean().item()
    assert jitter == pytest.approx(0.8, abs=0.03)


def test_blur_smooths_and_keeps_constants() -> None:
    noise = torch.randn(2, 4, 32, 32)
    blurred = gaussian_blur(noise, torch.tensor([0.5, 2.0]))
    assert blurred.shape == noise.shape
    assert blurred[1].std() < blurred[0].std() < noise.std()
    constant = torch.full((1, 4, 32, 32), 3.0)
    torch.testing.assert_close(gaussian_blur(constant, torch.tensor([1.5])), constant)
    blur_only = replace(PLAIN, blur_p=1.0)
    assert augment(noise, blur_only).std() < noise.std()


def test_blur_where_leaves_the_other_samples_exactly_as_they_were() -> None:
    noise = torch.randn(3, 4, 32, 32)
    sigma = torch.tensor([0.5, 2.0, 1.0])
    where = torch.tensor([True, False, True])
    blurred = gaussian_blur(noise, sigma, where=where)
    assert torch.equal(blurred[1], noise[1])
    torch.testing.assert_close(blurred[where], gaussian_blur(noise[where], sigma[where]))


def test_colour_jitter_strength_zero_keeps_band_levels() -> None:
    levels = torch.tensor([0.5, -1.0, 2.0, 0.1])
    flat = levels[None, :, None, None].expand(8, 4, 16, 16).contiguous()  # one level per band
    for view in byol_views(flat, torch.Generator().manual_seed(5), colour_jitter=0.0):
        # crops, flips, turns and blur of a flat image keep it flat; no jitter keeps its levels
        torch.testing.assert_close(view, flat, rtol=0, atol=1e-5)
    jittered = byol_views(flat, torch.Generator().manual_seed(5))[0]
    assert (jittered.mean(dim=(2, 3)) - levels).abs().max() > 0.05
    with pytest.raises(ValueError, match="colour_jitter"):
        byol_views(flat, colour_jitter=1.5)


def test_second_view_is_of_the_second_batch() -> None:
    """Temporal positives: the second view comes from the second date's images, drawn as the
    second view of a plain pair (same parameters)."""
    first, second = torch.zeros(4, 4, 16, 16), torch.ones(4, 4, 16, 16)
    view1, view2 = byol_views(first, torch.Generator().manual_seed(6), colour_jitter=0.0,
                              second=second)
    torch.testing.assert_close(view1, first)  # constants stay constant, up to rounding
    torch.testing.assert_close(view2, second)
    batch, other = torch.randn(4, 4, 16, 16), torch.randn(4, 4, 16, 16)
    same = byol_views(batch, torch.Generator().manual_seed(7), second=batch)
    plain = byol_views(batch, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(same, plain, strict=True))
    paired = byol_views(batch, torch.Generator().manual_seed(7), second=other)
    assert torch.equal(paired[0], plain[0]) and not torch.allclose(paired[1], plain[1])


def test_a_view_without_jitter_or_blur_skips_them_with_the_same_output(monkeypatch) -> None:
    flips_and_turns = replace(PLAIN, flip_p=0.5, rotate=True)
    batch = torch.randn(6, 4, 16, 16)
    params = draw_params(6, 4, (16, 16), flips_and_turns, torch.Generator().manual_seed(8))
    everything = augment_module.apply_params(batch, params)  # jitter and blur computed, unused

    def not_called(*args, **kwargs):
        raise AssertionError("a step whose probability is 0 was computed")

    monkeypatch.setattr(augment_module, "gaussian_blur", not_called)
    monkeypatch.setattr(augment_module, "_colour_jitter", not_called)
    skipped = augment(batch, flips_and_turns, torch.Generator().manual_seed(8))
    assert torch.equal(skipped, everything)
