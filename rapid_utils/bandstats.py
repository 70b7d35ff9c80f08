"""Per-band statistics: the mean and standard deviation every corpus kind is normalised with,
the arithmetic that computes them (`mean_std`) and the one function that applies them
(`normalise`, for CPU chips, device batches and exported weights alike).

Below both the corpus readers (which compute them) and the Datasets (which apply them), so
neither has to import the other for them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rapid_utils.corpus import layout
from rapid_utils.io import write_json_atomic


@dataclass(frozen=True)
class BandStats:
    """Mean and standard deviation per band, in stored units (reflectance x 10000).

    `per_source` holds other (mean, std) pairs by source name, for chips corpora normalised per
    folder of unlabelled chips (`corpus.chips`); `mean` and `std` are then the labelled chips'.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_sites: int
    n_pixels: int
    split_fingerprint: str = ""  # `splits.fingerprint` of the split whose training sites gave it
    per_source: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(
        default_factory=dict)
    # how they were drawn (`band_stats_recipe`, `chips.band_stats_recipe`): the same split
    # with another sample size, seed, pool or normalisation gives other statistics
    recipe: str = ""

    def for_source(self, source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of one source's chips: its own when normalised per source, else ours."""
        return self.per_source.get(source, (self.mean, self.std))

    def fingerprint(self) -> str:
        """A short content hash of the normalisation (means and stds), for provenance."""
        numbers = [list(self.mean), list(self.std)]
        # hashed only when present, so statistics without per-source entries keep the hash
        # that provenance records compare against
        if self.per_source:
            numbers.append({name: [list(m), list(s)] for name, (m, s) in
                            sorted(self.per_source.items())})
        return hashlib.sha256(json.dumps(numbers).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically)."""
        write_json_atomic(path, asdict(self) | {"bands": list(layout.BANDS)})

    @classmethod
    def load(cls, path: str | Path) -> BandStats:
        """Read from a JSON file written by `save` (older files have no split fingerprint)."""
        content = json.loads(Path(path).read_text())
        per_source = {name: (tuple(mean), tuple(std))
                      for name, (mean, std) in content.get("per_source", {}).items()}
        return cls(tuple(content["mean"]), tuple(content["std"]),
                   content["n_sites"], content["n_pixels"], content.get("split_fingerprint", ""),
                   per_source, content.get("recipe", ""))


def mean_std(total: np.ndarray, total_sq: np.ndarray, count: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std from sums of valid pixel values, their squares, and their count.

    The one place this arithmetic lives: GeoTIFF sites, chips and packed stores all sum their
    pixels their own way and end here. The variance is floored at 1e-12 (a constant band).
    """
    mean = total / count
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))


class PixelSums:
    """Running per-band sums of the valid pixels of (bands, H, W) masked chips, for `mean_std`."""

    def __init__(self, n_bands: int = len(layout.BANDS)) -> None:
        self.total, self.total_sq, self.count = (np.zeros(n_bands) for _ in range(3))

    def add(self, chip: np.ma.MaskedArray) -> None:
        """Count one chip's valid (unmasked) pixels, in float64."""
        values = np.ma.MaskedArray(np.asarray(chip.data, dtype=np.float64),
                                   mask=np.ma.getmaskarray(chip))
        self.total += values.sum(axis=(1, 2)).filled(0)
        self.total_sq += (values**2).sum(axis=(1, 2)).filled(0)
        self.count += values.count(axis=(1, 2))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """`mean_std` of the pixels counted so far."""
        return mean_std(self.total, self.total_sq, self.count)


def normalise(values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
              invalid: torch.Tensor | None = None) -> torch.Tensor:
    """(value - mean) / std per band of float (..., bands, H, W) stored values, on their
    device (`mean`, `std`: (bands, 1, 1)); `invalid` pixels (nodata) become 0, the band mean."""
    image = (values - mean.to(values.device)) / std.to(values.device)
    return image if invalid is None else image.masked_fill_(invalid, 0.0)
