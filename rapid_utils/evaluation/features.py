"""Frozen features: the one extractor of encoder features, and the imagestats baseline."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rapid_utils.train.runtime import to_device

IMAGESTATS = "imagestats"  # the image-statistics baseline: per-band statistics, no network
_PERCENTILES = (5, 25, 50, 75, 95)


def resize_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, C, H, W) images resized to `size` x `size` px (bilinear, antialiased when shrinking);
    None, or images already that size, are returned as they are.

    Evaluating a network on chips enlarged beyond their own size ("Resize is all you need",
    Corley et al. 2023: EuroSAT 64 -> 224 px) gives an ImageNet stem's feature maps more than
    one cell at the last stage.
    """
    if size is None or images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)


def extract_features(encoders: Mapping[str, nn.Module], loader: DataLoader,
                     device: torch.device, imagestats: bool = False, progress: bool = False,
                     image_size: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frozen features (N, D) of each encoder (name -> module) on `loader`'s images, and their
    labels (N,); with `imagestats`, `imagestats_features` of the same images as `IMAGESTATS`.
    With `image_size`, the encoders see the images resized to it (`resize_images`); imagestats
    reads them as they are (resizing only interpolates the same pixels).

    The images are read once, one date per item (date sampling "spread" or "first"; chips
    have one). Encoders run in eval mode, without gradients and in full precision, and are
    left in the mode they were in. Torch's global random state is left as it was, so
    extracting features mid-run (a collapse guard) changes no later draw.
    """
    names = [*([IMAGESTATS] if imagestats else []), *encoders]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    labels = []
    modes = {name: encoder.training for name, encoder in encoders.items()}
    cuda = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), torch.no_grad():
            for encoder in encoders.values():
                encoder.eval()
            for batch in tqdm(loader, desc="frozen features", unit="batch",
                              disable=not progress):
                image = to_device(batch["image"], device, loader.dataset)
                if image.ndim != 4:
                    raise ValueError(f"frozen features need one date per item, got images of "
                                     f"shape {tuple(image.shape)}: read the sites with "
                                     f"date_sampling 'spread' or 'first'")
                if imagestats:
                    parts[IMAGESTATS].append(imagestats_features(image.cpu().numpy()))
                resized = resize_images(image, image_size)
                for name, encoder in encoders.items():
                    parts[name].append(encoder(resized).float().cpu().numpy())
                labels.append(np.asarray(batch["label"]))
    finally:
        for name, encoder in encoders.items():
            encoder.train(modes[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}, np.concatenate(labels)


def recalibrate_batchnorm(encoders: Mapping[str, nn.Module], loader: DataLoader,
                          device: torch.device, progress: bool = False,
                          image_size: int | None = None) -> None:
    """Re-estimate every encoder's BatchNorm statistics on `loader`'s images (resized to
    `image_size` when given, as `extract_features` would), in place.

    A BYOL encoder's running statistics come from augmented training views (another size,
    jittered), a random-init encoder's are the identity it was built with: neither describes
    the clean images it is evaluated on. `torch.optim.swa_utils.update_bn` resets them and
    averages them over the loader (a forward pass in train mode, no gradients); the weights
    are untouched and each encoder is left in the mode it was in.
    """
    def images():
        for batch in tqdm(loader, desc="BatchNorm statistics", unit="batch",
                          disable=not progress):
            yield resize_images(to_device(batch["image"], device, loader.dataset), image_size)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for encoder in encoders.values():
            torch.optim.swa_utils.update_bn(images(), encoder)


def imagestats_features(images: np.ndarray) -> np.ndarray:
    """GEO-Bench's "imagestats" baseline: per band nan-mean, nan-std, 5/25/50/75/95 % percentiles.

    `images` is (N, C, H, W), or (N, T, C, H, W) for several dates of a site (dates and pixels
    pooled), NaN marking nodata. Returns (N, C * 7) float64, band by band in that order of
    statistics. A band with no valid pixel in an item gives NaN statistics for that item.
    """
    images = np.asarray(images)
    if images.ndim == 5:
        images = np.moveaxis(images, 1, 2)  # (N, C, T, H, W): pool dates with pixels
    elif images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) or (N, T, C, H, W), got {images.shape}")
    n, c = images.shape[:2]
    features = np.empty((n, c, 2 + len(_PERCENTILES)))
    # One item at a time: nanpercentile copies and sorts its input, and a whole corpus of
    # time series at once would need several times its memory.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        warnings.filterwarnings("ignore", "Degrees of freedom", RuntimeWarning)
        for i in range(n):
            pixels = images[i].reshape(c, -1).astype(np.float64)
            features[i, :, 0] = np.nanmean(pixels, axis=1)
            features[i, :, 1] = np.nanstd(pixels, axis=1)
            features[i, :, 2:] = np.nanpercentile(pixels, _PERCENTILES, axis=1).T
    return features.reshape(n, -1)
