"""Means with Student-t intervals, and the one difference of two results over seeds or repeats."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats


def mean_interval(values: np.ndarray, confidence: float = 0.95
                  ) -> tuple[float, float, float, float]:
    """(mean, std, low, high): std with ddof 1 and the Student-t interval of the mean; NaN
    spread for one value."""
    values = np.asarray(values, dtype=np.float64)
    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, np.nan, np.nan, np.nan
    std = float(np.std(values, ddof=1))
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / np.sqrt(n)
    return mean, std, mean - half, mean + half


@dataclass(frozen=True)
class Difference:
    """`a` minus `b`, and how sure: see `difference`."""

    mean: float
    std: float  # spread of one key's difference: paired std, or sqrt(sa² + sb²) unpaired
    ci_low: float  # Student-t interval of the mean (NaN when unpaired or one key)
    ci_high: float
    paired: bool
    wins: int  # keys both hold where a is larger


def difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
               confidence: float = 0.95) -> Difference:
    """`a` minus `b`, each key -> value (a seed or a repeat -> accuracy).

    Paired when both hold the same two or more keys: the mean and std (ddof 1) of the per-key
    differences and the Student-t interval of that mean, so what a key moves in both (its
    labels, its test items) cancels. Otherwise unpaired: the difference of the means and the
    combined std sqrt(sa² + sb²) (NaN for a side with one value), with no interval.
    """
    if set(a) == set(b) and len(a) > 1:
        keys = list(a)
        mean, std, low, high = mean_interval([a[k] - b[k] for k in keys], confidence)
        return Difference(mean, std, low, high, paired=True,
                          wins=sum(a[k] > b[k] for k in keys))
    std_a, std_b = (mean_interval(list(side.values()))[1] for side in (a, b))
    return Difference(float(np.mean(list(a.values())) - np.mean(list(b.values()))),
                      float(np.hypot(std_a, std_b)), np.nan, np.nan, paired=False,
                      wins=sum(a[k] > b[k] for k in set(a) & set(b)))
