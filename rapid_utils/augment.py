"""Batched augmentations for multispectral (B, C, H, W) tensors, drawn independently per sample.

BYOL's image augmentations (Grill et al. 2020, Appendix B) without the parts that assume RGB
(hue, saturation, greyscale, solarisation): random resized crop, flips and 90-degree rotations
(one `grid_sample` for the whole batch), per-band brightness/contrast jitter, and Gaussian blur.
Values are never clipped, so normalised reflectance (any sign, any band count) passes unchanged
in kind. Random parameters are drawn with a `torch.Generator` on its own device and moved to the
batch's device, so the same seed gives the same views on CPU and GPU.
"""

from __future__ import annotations

import math
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


VIEW1 = ViewConfig(blur_p=1.0)
"""BYOL's first view: always blurred."""
VIEW2 = ViewConfig(blur_p=0.1)
"""BYOL's second view: rarely blurred."""


@dataclass(frozen=True)
class ViewParams:
    """The random draws of one view for a batch of n samples (all tensors have n rows)."""

    theta: torch.Tensor  # (n, 2, 3) affine map from output to input coordinates (grid_sample)
    jitter: torch.Tensor  # (n,) bool: brightness/contrast applied
    brightness: torch.Tensor  # (n, C) additive shift per band
    contrast: torch.Tensor  # (n, C) factor per band
    blur: torch.Tensor  # (n,) bool: blurred
    sigma: torch.Tensor  # (n,) blur standard deviation in pixels


def draw_params(
    n: int,
    channels: int,
    image_hw: tuple[int, int],
    config: ViewConfig,
    generator: torch.Generator | None = None,
) -> ViewParams:
    """Draw the parameters of `config` for `n` samples of `channels` bands and `image_hw` pixels."""
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
    return ViewParams(
        theta=theta,
        jitter=coin(config.jitter_p),
        brightness=uniform(-config.brightness, config.brightness, n, channels),
        contrast=uniform(1 - config.contrast, 1 + config.contrast, n, channels),
        blur=coin(config.blur_p),
        sigma=uniform(*config.blur_sigma, n),
    )


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
    """Per-band contrast around each sample's band mean, then brightness, where `params.jitter`."""
    mean = batch.mean(dim=(-2, -1), keepdim=True)
    jittered = (
        (batch - mean) * params.contrast[..., None, None] + mean
        + params.brightness[..., None, None]
    )
    return torch.where(params.jitter[:, None, None, None], jittered, batch)


def augment(
    batch: torch.Tensor,
    config: ViewConfig,
    generator: torch.Generator | None = None,
    size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """One randomly augmented view of every sample in `batch` (parameters drawn per sample).

    Every parameter is drawn, used or not, so a view's draws never depend on its
    probabilities; a step whose probability is 0 is skipped.
    """
    params = draw_params(batch.shape[0], batch.shape[1], tuple(batch.shape[-2:]), config, generator)
    return apply_params(batch, params, size, jitter=config.jitter_p > 0, blur=config.blur_p > 0)


def byol_view_configs(colour_jitter: float = VIEW1.brightness) -> tuple[ViewConfig, ViewConfig]:
    """`VIEW1` and `VIEW2` with brightness and contrast strength `colour_jitter` (0: none).

    Land cover is largely in per-band reflectance levels, which colour jitter asks the encoder
    to ignore; the strength is a parameter so that trade-off can be measured.
    """
    if not 0 <= colour_jitter < 1:
        raise ValueError(f"colour_jitter must be in [0, 1), got {colour_jitter}")
    return tuple(replace(view, brightness=colour_jitter, contrast=colour_jitter)
                 for view in (VIEW1, VIEW2))


def byol_views(
    batch: torch.Tensor,
    generator: torch.Generator | None = None,
    size: int | tuple[int, int] | None = None,
    colour_jitter: float = VIEW1.brightness,
    second: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BYOL's two views: `VIEW1` (always blurred) of `batch` and `VIEW2` (blurred with p 0.1)
    of `second`, by default `batch` too (temporal positives pass the second date's images)."""
    first_view, second_view = byol_view_configs(colour_jitter)
    return (augment(batch, first_view, generator, size),
            augment(batch if second is None else second, second_view, generator, size))


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
