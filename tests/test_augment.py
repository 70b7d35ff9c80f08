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


# --------------------------------------------------------------------------- view options
# (issue 29): shared jitter, blur switch, noise

# Per-band statistics in stored units (reflectance x 10000), like band_stats.json's.
MEAN = torch.tensor([500.0, 800.0, 700.0, 2500.0], dtype=torch.float64)
STD = torch.tensor([300.0, 400.0, 450.0, 900.0], dtype=torch.float64)


def raw_and_normalised(n: int = 16, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive raw reflectance (float64) and the same normalised per band."""
    raw = MEAN[:, None, None] * (0.2 + 1.6 * torch.rand(
        n, 4, size, size, generator=torch.Generator().manual_seed(11), dtype=torch.float64))
    return raw, (raw - MEAN[:, None, None]) / STD[:, None, None]


def unnormalise(view: torch.Tensor) -> torch.Tensor:
    return view * STD[:, None, None] + MEAN[:, None, None]


def test_default_views_are_those_before_the_view_options() -> None:
    """Bit-identical views before and after issue 29 (checked with torch.equal against the old
    module when the options came); stored here as sums and pixels of float64 views."""
    batch = torch.arange(2 * 4 * 8 * 8, dtype=torch.float64).reshape(2, 4, 8, 8).sin()
    view1, view2 = byol_views(batch, torch.Generator().manual_seed(29), 6)
    expected_sums = (
        [[4.450048458178803, 9.31176022377815, 5.469867275691579, -2.3302499853798073],
         [0.2601153956415751, 0.0731163052546614, -0.2028130898889094, -0.23206385665211568]],
        [[8.270632211760944, -1.4035996135121844, -3.9700627962562964, -3.129567954143562],
         [-9.306428129884125, 1.8539902274495943, -10.275491874600835, -6.195360437380933]])
    expected_pixels = (
        [[-0.46888520185975546, -0.10041169959634386, 0.2925401684484917, 0.3513208621775701],
         [0.027399974397158133, -0.04413003923702262, -0.061985324305492306,
          -0.0044487557822327495]],
        [[0.701016069198867, 0.05888666829604762, -0.7434766295666978, -0.5209707696929688],
         [-0.4753315658759895, -0.563247896626444, -0.6150582229152013, 0.10483949119158281]])
    for view, sums, pixels in zip((view1, view2), expected_sums, expected_pixels, strict=True):
        torch.testing.assert_close(view.sum(dim=(2, 3)), torch.tensor(sums, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(view[:, :, 2, 3], torch.tensor(pixels, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
    explicit = byol_views(batch, torch.Generator().manual_seed(29), 6, jitter_bands="per-band",
                          blur=True, noise=0.0, normalisation=(MEAN, STD))
    assert all(torch.equal(a, b) for a, b in zip(explicit, (view1, view2), strict=True))


def test_shared_brightness_keeps_the_raw_band_ratios_pixel_by_pixel() -> None:
    """Un-normalised, a shared-jitter view is the un-normalised crop times one factor per
    sample: the ratios between bands are those of the crop at every pixel. Per-band jitter
    changes them."""
    raw, normalised = raw_and_normalised()
    shared = replace(VIEW1, jitter_p=1.0, contrast=0.0, blur_p=0.0, jitter_bands="shared")
    crop = replace(shared, jitter_p=0.0)  # the same draws (crop, flips, turns), no jitter

    def views(config: ViewConfig, normalisation: tuple | None = (MEAN, STD)) -> torch.Tensor:
        return unnormalise(augment(normalised, config, torch.Generator().manual_seed(12), 20,
                                   normalisation))

    plain, jittered = views(crop), views(shared)
    factor = jittered / plain
    torch.testing.assert_close(factor, factor[:, :1, :1, :1].expand_as(factor), rtol=1e-5, atol=0)
    assert factor[:, 0, 0, 0].std() > 0.05  # one factor per sample, drawn in [0.6, 1.4]
    assert ((factor > 0.6 - 1e-6) & (factor < 1.4 + 1e-6)).all()
    torch.testing.assert_close(jittered / jittered[:, :1], plain / plain[:, :1], rtol=1e-5, atol=0)
    per_sample = (MEAN.expand(len(raw), 4), STD.expand(len(raw), 4))  # (n, C) works alike
    torch.testing.assert_close(views(shared, per_sample), jittered, rtol=0, atol=0)

    per_band = views(replace(shared, jitter_bands="per-band"))
    ratios = (per_band / per_band[:, :1]) / (plain / plain[:, :1])
    assert (ratios - 1).abs().amax(dim=(1, 2, 3)).min() > 0.01  # every sample's ratios move


def test_shared_contrast_is_one_factor_around_each_band_mean() -> None:
    _, normalised = raw_and_normalised()
    contrast = replace(VIEW1, jitter_p=1.0, brightness=0.0, blur_p=0.0, jitter_bands="shared")
    plain = augment(normalised, replace(contrast, jitter_p=0.0), torch.Generator().manual_seed(13),
                    None, (MEAN, STD))
    view = augment(normalised, contrast, torch.Generator().manual_seed(13), None, (MEAN, STD))
    band_mean = plain.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(view.mean(dim=(2, 3), keepdim=True), band_mean)  # levels kept
    factor = (view - band_mean) / (plain - band_mean)
    torch.testing.assert_close(factor, factor[:, :1, :1, :1].expand_as(factor), rtol=1e-5, atol=0)
    assert factor[:, 0, 0, 0].std() > 0.05


def test_shared_byol_views_keep_the_ratios_of_the_band_levels() -> None:
    """End to end (BYOL's crops, flips, turns; blur off): with shared jitter, the raw band
    means of each view keep the ratios of the band means of the same view without jitter."""
    _, normalised = raw_and_normalised()
    seed = torch.Generator().manual_seed

    def band_ratios(views: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        means = [unnormalise(view).mean(dim=(2, 3)) for view in views]
        return [m / m[:, :1] for m in means]

    plain = band_ratios(byol_views(normalised, seed(14), 16, colour_jitter=0.0, blur=False))
    shared = band_ratios(byol_views(normalised, seed(14), 16, blur=False, jitter_bands="shared",
                                    normalisation=(MEAN, STD)))
    per_band = band_ratios(byol_views(normalised, seed(14), 16, blur=False))
    for a, b, c in zip(plain, shared, per_band, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=0)
        assert (c / a - 1).abs().max() > 0.05


def test_shared_jitter_draws_what_per_band_jitter_draws() -> None:
    """The same seed gives the same crops, flips and blur with either jitter."""
    a = draw_params(8, 4, (16, 16), VIEW1, torch.Generator().manual_seed(15))
    b = draw_params(8, 4, (16, 16), replace(VIEW1, jitter_bands="shared"),
                    torch.Generator().manual_seed(15), (MEAN, STD))
    for name in ("theta", "jitter", "blur", "sigma"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(b.gain[:, 0], 1 + a.brightness[:, 0])
    assert torch.equal(a.gain, torch.ones_like(a.gain))


def test_blur_off_blurs_neither_view(monkeypatch) -> None:
    batch = torch.randn(6, 4, 16, 16)
    blurred = byol_views(batch, torch.Generator().manual_seed(16))
    generator = torch.Generator().manual_seed(16)
    drawn = [draw_params(6, 4, (16, 16), view, generator) for view in (VIEW1, VIEW2)]
    expected = [augment_module.apply_params(batch, params, blur=False) for params in drawn]

    def not_called(*args, **kwargs):
        raise AssertionError("a view was blurred")

    monkeypatch.setattr(augment_module, "gaussian_blur", not_called)
    sharp = byol_views(batch, torch.Generator().manual_seed(16), blur=False)
    for view, want in zip(sharp, expected, strict=True):
        assert torch.equal(view, want)  # the same draws, without the blur
    assert not torch.allclose(sharp[0], blurred[0])  # VIEW1 is always blurred by default


def test_noise_has_the_asked_std() -> None:
    batch = torch.randn(32, 4, 32, 32)
    clean = byol_views(batch, torch.Generator().manual_seed(17))
    noisy = byol_views(batch, torch.Generator().manual_seed(17), noise=0.25)
    noise = noisy[0] - clean[0]  # VIEW1's draws come first: the same view, plus the noise
    assert noise.std().item() == pytest.approx(0.25, rel=0.01)
    assert abs(noise.mean().item()) < 0.005
    bands = noise.transpose(0, 1).reshape(4, -1)
    assert torch.corrcoef(bands).fill_diagonal_(0).abs().max() < 0.02  # independent per band
    assert noisy[1].std() > clean[1].std()


@pytest.mark.parametrize(("build", "field"), [
    (lambda: ViewConfig(jitter_bands="per-pixel"), "jitter_bands"),
    (lambda: ViewConfig(noise=-0.1), "noise"),
    (lambda: ViewConfig(noise=float("nan")), "noise"),
    (lambda: ViewConfig(jitter_bands="shared", brightness=1.2), "brightness"),
    (lambda: byol_views(torch.zeros(2, 4, 8, 8), blur="no"), "blur"),
    (lambda: byol_views(torch.zeros(2, 4, 8, 8), noise=-1.0), "noise"),
    (lambda: byol_views(torch.zeros(2, 4, 8, 8), jitter_bands="shared"), "normalisation"),
    (lambda: byol_views(torch.zeros(2, 4, 8, 8), jitter_bands="shared",
                        normalisation=(MEAN[:3], STD[:3])), "normalisation"),
])
def test_bad_view_options_name_their_field(build, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()
