"""Batched augmentations for multispectral (B, C, H, W) tensors, drawn independently per sample.

BYOL's image augmentations (Grill et al. 2020, Appendix B) without the parts that assume RGB
(hue, saturation, greyscale, solarisation): random resized crop, flips and 90-degree rotations
(one `grid_sample` for the whole batch), brightness/contrast jitter (per band, or shared by all
bands so that the spectrum's shape survives), Gaussian blur and, optionally, additive Gaussian
noise. Values are never clipped, so normalised reflectance (any sign, any band count) passes
unchanged in kind. Random parameters are drawn with a `torch.Generator` on its own device and
moved to the batch's device, so the same seed gives the same views on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewConfig:
    """Strengths and probabilities of one view's augmentations.

    `crop_scale` is the range of the crop's share of the image area. BYOL uses (0.08, 1.0) on
    ImageNet objects; land cover chips are often a single texture at 200 px, and crops below a
    fifth of the area (< 90 px) lose the context the 7 classes need, hence (0.2, 1.0).
    `brightness` is an additive per-band shift in the data's units (one standard deviation of
    normalised data is 1) and `contrast` a per-band factor around the sample's band mean, both
    drawn from [1 - c, 1 + c] or [-b, b] like torchvision's ColorJitter, applied with
    probability `jitter_p` (BYOL: 0.8 with strengths 0.4). `blur_sigma` is in pixels of the
    output; the kernel spans about a tenth of it, as BYOL's 23 px at 224 px.

    `jitter_bands="shared"` keeps what per-band jitter erases: land cover is largely in the
    per-band reflectance levels, and independent per-band shifts teach the encoder to ignore
    them (torchgeo's MoCo trainer drops colour jitter for multispectral data; SSL4EO-S12 draws
    one factor for all bands). Per sample it draws one brightness factor f from
    [1 - brightness, 1 + brightness] that multiplies the raw reflectance of every band, so the
    ratios between bands (the spectrum's shape, NDVI) are kept pixel by pixel: an illumination
    or gain change. Contrast is one factor for all bands around each band's mean over the view,
    as SSL4EO-S12's: it keeps every band's mean level (so the ratios of the band means) and
    stretches every band's spatial variation alike; a pixel's band ratios move towards or away
    from the view's mean spectrum, which is the texture change contrast is meant to be. (A
    contrast that kept pixel ratios would have to scale all bands of a pixel by one
    brightness-dependent factor, which turns negative for dark pixels such as water at
    factors above 1.) Shared jitter needs the normalisation the batch was made with (see
    `draw_params`). `noise` is the standard deviation of additive Gaussian noise in the data's
    units (normalised: 1 is a band's standard deviation), added last, after the blur; 0: none.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rotate: bool = True
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    jitter_bands: str = "per-band"  # "per-band" or "shared" (one factor for all bands)
    noise: float = 0.0

    def __post_init__(self) -> None:
        if self.jitter_bands not in JITTER_BANDS:
            raise ValueError(
                f"jitter_bands must be one of {JITTER_BANDS}, got {self.jitter_bands!r}")
        if not (isinstance(self.noise, int | float) and 0 <= self.noise < math.inf):
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if self.jitter_bands == "shared" and not 0 <= self.brightness < 1:
            raise ValueError("brightness must be in [0, 1) with shared jitter (a factor "
                             f"1 +- brightness that stays positive), got {self.brightness}")


Normalisation = tuple[Sequence[float] | torch.Tensor, Sequence[float] | torch.Tensor]
"""(mean, std) per band, (C,) or (n, C), that a batch was normalised with: x' = (x - mean) / std."""

JITTER_BANDS = ("per-band", "shared")
"""`ViewConfig.jitter_bands`: one brightness and contrast draw per band, or one for all bands."""

VIEW1 = ViewConfig(blur_p=1.0)
"""BYOL's first view: always blurred."""
VIEW2 = ViewConfig(blur_p=0.1)
"""BYOL's second view: rarely blurred."""


@dataclass(frozen=True)
class ViewParams:
    """The random draws of one view for a batch of n samples (all tensors have n rows)."""

    theta: torch.Tensor  # (n, 2, 3) affine map from output to input coordinates (grid_sample)
    jitter: torch.Tensor  # (n,) bool: brightness/contrast applied
    brightness: torch.Tensor  # (n, C) additive shift per band, after `gain`
    gain: torch.Tensor  # (n, C) factor per band, after contrast (1 with per-band jitter)
    contrast: torch.Tensor  # (n, C) factor per band
    blur: torch.Tensor  # (n,) bool: blurred
    sigma: torch.Tensor  # (n,) blur standard deviation in pixels


def draw_params(
    n: int,
    channels: int,
    image_hw: tuple[int, int],
    config: ViewConfig,
    generator: torch.Generator | None = None,
    normalisation: Normalisation | None = None,
) -> ViewParams:
    """Draw the parameters of `config` for `n` samples of `channels` bands and `image_hw` pixels.

    Both jitter modes draw the same numbers (shared jitter uses each sample's first band's), so
    a seed gives the same crops, flips and blur with either. `normalisation` is the per-band
    (mean, std), (C,) or per sample (n, C), that made the batch, x' = (x - mean) / std from
    raw reflectance x; shared jitter needs it: a factor f on raw values is, in normalised
    units, x' -> f x' + (f - 1) mean / std (`gain` f, `brightness` (f - 1) mean / std).
    """
    device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < p

    # Crop: area share and log-uniform aspect ratio (width / height) in pixels, as torchvision.
    height, width = image_hw
    area = uniform(*config.crop_scale, n)
    ratio = torch.exp(uniform(*(math.log(r) for r in config.crop_ratio), n))
    crop_w = (torch.sqrt(area * ratio * height / width)).clamp(max=1.0)  # share of the width
    crop_h = (torch.sqrt(area / ratio * width / height)).clamp(max=1.0)
    # Crop centre in grid_sample coordinates ([-1, 1]), keeping the crop inside the image.
    centre_x = (1 - crop_w) * uniform(-1.0, 1.0, n)
    centre_y = (1 - crop_h) * uniform(-1.0, 1.0, n)
    flip_x = torch.where(coin(config.flip_p), -1.0, 1.0)
    flip_y = torch.where(coin(config.flip_p), -1.0, 1.0)
    quarter_turns = torch.randint(
        0, 4 if config.rotate else 1, (n,), generator=generator, device=device
    )
    cos = torch.cos(quarter_turns * math.pi / 2).round()
    sin = torch.sin(quarter_turns * math.pi / 2).round()
    # Output coords are rotated, then flipped, then scaled and shifted into the crop.
    theta = torch.stack(
        [
            torch.stack([crop_w * flip_x * cos, -crop_w * flip_x * sin, centre_x], dim=-1),
            torch.stack([crop_h * flip_y * sin, crop_h * flip_y * cos, centre_y], dim=-1),
        ],
        dim=1,
    )
    jitter = coin(config.jitter_p)
    brightness = uniform(-config.brightness, config.brightness, n, channels)
    contrast = uniform(1 - config.contrast, 1 + config.contrast, n, channels)
    gain = torch.ones_like(brightness)
    if config.jitter_bands == "shared":
        gain = 1 + brightness[:, :1].expand(n, channels)
        brightness = (gain - 1) * _raw_zero_offset(normalisation, n, channels, device)
        contrast = contrast[:, :1].expand(n, channels)
    return ViewParams(
        theta=theta,
        jitter=jitter,
        brightness=brightness,
        gain=gain,
        contrast=contrast,
        blur=coin(config.blur_p),
        sigma=uniform(*config.blur_sigma, n),
    )


def _raw_zero_offset(
    normalisation: Normalisation | None,
    n: int, channels: int, device: torch.device,
) -> torch.Tensor:
    """mean / std per band as (n, C): minus the normalised value of raw reflectance 0."""
    if normalisation is None:
        raise ValueError("jitter_bands='shared' needs the normalisation (mean, std per band) "
                         "the batch was made with, to scale raw reflectance")
    mean, std = (torch.as_tensor(v, dtype=torch.float64) for v in normalisation)
    if (mean.shape != std.shape or mean.shape[-1:] != (channels,) or mean.dim() > 2
            or mean.dim() == 2 and len(mean) != n):
        raise ValueError(f"normalisation must be a mean and a std of {channels} bands, (C,) or "
                         f"({n}, C), got shapes {tuple(mean.shape)} and {tuple(std.shape)}")
    return (mean / std).to(device, torch.float32).expand(n, channels)


def apply_params(
    batch: torch.Tensor, params: ViewParams, size: int | tuple[int, int] | None = None,
    jitter: bool = True, blur: bool = True,
) -> torch.Tensor:
    """Apply drawn `params` to a (B, C, H, W) float batch; output is `size` (default: H, W).

    Rotations are exact quarter turns when the output is square. `jitter` or `blur` False
    skips that step, for a view whose probability of it is 0 (the output is the same).
    """
    n, channels = batch.shape[:2]
    out_hw = batch.shape[-2:] if size is None else _pair(size)
    p = _to(params, batch.device, batch.dtype)
    grid = F.affine_grid(p.theta, [n, channels, *out_hw], align_corners=False)
    out = F.grid_sample(
        batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    if jitter:
        out = _colour_jitter(out, p)
    return gaussian_blur(out, p.sigma, where=p.blur) if blur else out


def _colour_jitter(batch: torch.Tensor, params: ViewParams) -> torch.Tensor:
    """Contrast around each sample's band mean, then gain and brightness, where `params.jitter`.

    With per-band jitter the gain is exactly 1, so the views are those of the additive shift
    alone, bit for bit.
    """
    mean = batch.mean(dim=(-2, -1), keepdim=True)
    jittered = (
        ((batch - mean) * params.contrast[..., None, None] + mean) * params.gain[..., None, None]
        + params.brightness[..., None, None]
    )
    return torch.where(params.jitter[:, None, None, None], jittered, batch)


def augment(
    batch: torch.Tensor,
    config: ViewConfig,
    generator: torch.Generator | None = None,
    size: int | tuple[int, int] | None = None,
    normalisation: Normalisation | None = None,
) -> torch.Tensor:
    """One randomly augmented view of every sample in `batch` (parameters drawn per sample).

    Every parameter is drawn, used or not, so a view's draws never depend on its
    probabilities; a step whose probability is 0 is skipped. The noise (`config.noise` > 0)
    is drawn last, after the view's other parameters. `normalisation`: see `draw_params`.
    """
    params = draw_params(batch.shape[0], batch.shape[1], tuple(batch.shape[-2:]), config,
                         generator, normalisation)
    out = apply_params(batch, params, size, jitter=config.jitter_p > 0, blur=config.blur_p > 0)
    if config.noise > 0:
        # drawn on the generator's device, as the other parameters: same views on CPU and GPU
        device = generator.device if generator is not None else torch.device("cpu")
        out = out + config.noise * torch.randn(
            out.shape, generator=generator, device=device).to(out.device, out.dtype)
    return out


def byol_view_configs(
    colour_jitter: float = VIEW1.brightness,
    jitter_bands: str = VIEW1.jitter_bands,
    blur: bool = True,
    noise: float = VIEW1.noise,
) -> tuple[ViewConfig, ViewConfig]:
    """`VIEW1` and `VIEW2` with brightness and contrast strength `colour_jitter` (0: none),
    jitter per band or shared by all bands (`jitter_bands`), blur or none (`blur` False: neither
    view is blurred) and additive Gaussian noise of std `noise` (normalised units; 0: none).

    Land cover is largely in per-band reflectance levels, which per-band colour jitter asks the
    encoder to ignore; and BYOL's blur (sigma up to 2 px) is strong on views of a few dozen
    pixels (solo-learn's and lightly's CIFAR recipes drop it). These are parameters so that
    the trade-offs can be measured; the defaults are BYOL's views.
    """
    if not 0 <= colour_jitter < 1:
        raise ValueError(f"colour_jitter must be in [0, 1), got {colour_jitter}")
    if not isinstance(blur, bool):
        raise ValueError(f"blur must be True or False, got {blur!r}")
    # the blur draws stay (`augment` draws every parameter), so only the blur itself goes
    no_blur = {} if blur else {"blur_p": 0.0}
    return tuple(replace(view, brightness=colour_jitter, contrast=colour_jitter,
                         jitter_bands=jitter_bands, noise=noise, **no_blur)
                 for view in (VIEW1, VIEW2))


def byol_views(
    batch: torch.Tensor,
    generator: torch.Generator | None = None,
    size: int | tuple[int, int] | None = None,
    colour_jitter: float = VIEW1.brightness,
    second: torch.Tensor | None = None,
    *,
    jitter_bands: str = VIEW1.jitter_bands,
    blur: bool = True,
    noise: float = VIEW1.noise,
    normalisation: Normalisation | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BYOL's two views: `VIEW1` (always blurred) of `batch` and `VIEW2` (blurred with p 0.1)
    of `second`, by default `batch` too (temporal positives pass the second date's images).

    `jitter_bands`, `blur` and `noise` change both views (`byol_view_configs`); shared jitter
    needs the `normalisation` (mean, std per band) that made the batch (`draw_params`).
    """
    first_view, second_view = byol_view_configs(colour_jitter, jitter_bands, blur, noise)
    return (augment(batch, first_view, generator, size, normalisation),
            augment(batch if second is None else second, second_view, generator, size,
                    normalisation))


def gaussian_blur(batch: torch.Tensor, sigma: torch.Tensor, where: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Blur each sample of a (B, C, H, W) batch with its own `sigma` (B,), separably.

    The kernel is odd and about a tenth of the image side (at least 3 px); borders reflect.
    Samples where the boolean `where` (B,) is False come back unchanged: their kernel is a unit
    impulse, so the batch is never split by a boolean mask (a host sync on GPUs every step).
    """
    n, channels, height, width = batch.shape
    radius = max(1, round(min(height, width) / 20))
    offsets = torch.arange(-radius, radius + 1, device=batch.device, dtype=batch.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(batch)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    if where is not None:
        kernel = torch.where(where.to(batch.device)[:, None], kernel, (offsets == 0).to(batch))
    kernel = kernel.repeat_interleave(channels, dim=0)
    # One group per (sample, band): each sample's kernel reaches only its own bands.
    x = batch.reshape(1, n * channels, height, width)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel[:, None, None, :], groups=n * channels)
    x = F.conv2d(x, kernel[:, None, :, None], groups=n * channels)
    return x.reshape(n, channels, height, width)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _to(params: ViewParams, device: torch.device, dtype: torch.dtype) -> ViewParams:
    """`params` on `device`, with float tensors in `dtype`."""
    moved = {
        name: value.to(device, dtype) if value.is_floating_point() else value.to(device)
        for name, value in vars(params).items()
    }
    return ViewParams(**moved)
