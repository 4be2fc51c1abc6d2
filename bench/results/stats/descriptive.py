"""Means over seeds with their Student-t intervals, and the helpers every test shares."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

# Below this a standard deviation is rounding noise of identical values, not spread.
ZERO_SD = 1e-12

#: Accuracy per seed of one cell.
Seeds = Mapping[Hashable, float]


@dataclass(frozen=True)
class MeanCI:
    """A mean over seeds with its t-interval.

    Attributes:
        mean: Arithmetic mean of the values.
        half_width: Half-width of the two-sided interval; None when n < 2 (one value gives no
            estimate of spread, so no interval).
        n: Number of values.
        confidence: Confidence level of the interval.
    """

    mean: float
    half_width: float | None
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float | None:
        """Lower end of the interval, or None without one."""
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        """Upper end of the interval, or None without one."""
        return None if self.half_width is None else self.mean + self.half_width


def values_of(seeds: Seeds) -> np.ndarray:
    """The values of a seed map as a float array, in seed order (for reproducible arithmetic)."""
    return np.array([seeds[s] for s in sorted(seeds, key=repr)], dtype=float)


def t_quantile(confidence: float, df: float) -> float:
    """The two-sided t critical value for ``confidence`` with ``df`` degrees of freedom."""
    return float(sps.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean with a two-sided Student-t interval, ``mean ± t(n-1) * sd / sqrt(n)``.

    Assumes the values are iid normal (see the module docstring). With n = 1 there is no
    interval (``half_width`` is None); with identical values the half-width is 0.

    Args:
        values: One value per seed; at least one, all finite.
        confidence: Confidence level, in (0, 1).

    Returns:
        The mean, its half-width and n.

    Raises:
        ValueError: When ``values`` is empty or holds nan/inf.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("mean_ci needs a non-empty 1-D sequence of values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"mean_ci needs finite values, got {x.tolist()}")
    # Summed in sorted order: callers pass seeds in records-file order, and a sum in another
    # order differs in the last bit, which a table printed to 0.01 pp can show.
    x = np.sort(x)
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, None, n, confidence)
    sd = float(x.std(ddof=1))
    half_width = 0.0 if sd < ZERO_SD else t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return MeanCI(mean, half_width, n, confidence)


def degenerate_p(diff: float) -> float:
    """p-value when the spread is zero: the limit of the t-test (|t| -> inf unless diff is 0)."""
    return 1.0 if abs(diff) < ZERO_SD else 0.0
