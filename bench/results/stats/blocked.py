"""One blocked linear model for a grid of settings: accuracy ~ norm x setting + seed block,
fitted by least squares, with contrasts, interactions and per-norm trend slopes."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.results.stats.descriptive import ZERO_SD, t_quantile

#: Accuracy per seed of each (norm, setting) cell.
Grid = Mapping[tuple[str, Hashable], Mapping[Hashable, float]]


@dataclass(frozen=True)
class Contrast:
    """A linear combination of a blocked model's coefficients, with its t-test.

    Attributes:
        estimate: The combination's value (a fraction, or a fraction per unit of the covariate).
        half_width: Half-width of its two-sided t-interval.
        pvalue: Two-sided p-value of a zero value.
        se: Standard error.
        df: Residual degrees of freedom of the model.
    """

    estimate: float
    half_width: float
    pvalue: float
    se: float
    df: float

    @property
    def tested(self) -> bool:
        """Always true: a contrast exists only when the model could test it."""
        return True


@dataclass(frozen=True)
class Fit:
    """A least-squares fit: coefficients, their covariance, residual df and column names."""

    names: tuple[Hashable, ...]
    beta: np.ndarray
    cov: np.ndarray
    df: int
    confidence: float

    def contrast(self, weights: Mapping[Hashable, float]) -> Contrast | None:
        """The t-test of ``sum(weight * coefficient)``; None when a column is not in the
        model, the combination is not estimable, or no residual df is left."""
        if self.df < 1 or any(name not in self.names for name in weights):
            return None
        c = np.zeros(len(self.names))
        for name, w in weights.items():
            c[self.names.index(name)] = w
        estimate, variance = float(c @ self.beta), float(c @ self.cov @ c)
        if not math.isfinite(variance) or variance < 0:
            return None
        se = math.sqrt(variance)
        if se < ZERO_SD:
            return Contrast(estimate, 0.0, 1.0 if abs(estimate) < ZERO_SD else 0.0, 0.0, self.df)
        pvalue = float(2 * sps.t.sf(abs(estimate) / se, self.df))
        half_width = t_quantile(self.confidence, self.df) * se
        return Contrast(estimate, half_width, pvalue, se, float(self.df))


def fit_ols(
    columns: Sequence[Mapping[Hashable, float]],
    y: Sequence[float],
    seeds: Sequence[Hashable],
    confidence: float = 0.95,
) -> Fit:
    """Ordinary least squares of ``y`` on the named columns plus one fixed effect per seed
    (seed blocks; the first seed is the reference, so the columns carry the intercepts).

    Written with ``numpy.linalg.lstsq`` because statsmodels is not a dependency of the project
    and the model needs nothing beyond OLS and its covariance, ``s² (X'X)^+``. Seed blocks
    remove what a seed shares across every cell it ran (data order, noise streams): the
    variance that per-cell tests over 2 seeds leave in their error term.

    Args:
        columns: Per observation, its non-zero design values by column name.
        y: The observations.
        seeds: Each observation's seed.
        confidence: Confidence level of the contrasts' intervals.

    Returns:
        The fit; contrasts on it test combinations of the named columns.
    """
    names = sorted({name for row in columns for name in row}, key=repr)
    blocks = sorted(set(seeds), key=repr)[1:]
    x = np.zeros((len(y), len(names) + len(blocks)))
    for i, (row, seed) in enumerate(zip(columns, seeds, strict=True)):
        for name, value in row.items():
            x[i, names.index(name)] = value
        if seed in blocks:
            x[i, len(names) + blocks.index(seed)] = 1.0
    yy = np.asarray(y, dtype=float)
    beta, _, rank, _ = np.linalg.lstsq(x, yy, rcond=None)
    df = len(yy) - int(rank)
    rss = float(((yy - x @ beta) ** 2).sum())
    cov = (rss / df if df > 0 else math.nan) * np.linalg.pinv(x.T @ x)
    k = len(names)
    return Fit(tuple(names), beta[:k], cov[:k, :k], df, confidence)


def cell_model(grid: Grid, confidence: float = 0.95) -> Fit:
    """accuracy ~ norm x setting (one mean per cell) + seed block; columns are the cells."""
    columns, y, seeds = [], [], []
    for cell, values in sorted(grid.items(), key=repr):
        for seed, acc in values.items():
            columns.append({cell: 1.0})
            y.append(acc)
            seeds.append(seed)
    return fit_ols(columns, y, seeds, confidence)


def trend_model(grid: Grid, covariate: Mapping[Hashable, float], confidence: float = 0.95) -> Fit:
    """accuracy ~ norm + norm:covariate + seed block: one straight line per norm, shared seed
    blocks; columns ``(norm, "intercept")`` and ``(norm, "slope")``."""
    columns, y, seeds = [], [], []
    for (norm, setting), values in sorted(grid.items(), key=repr):
        for seed, acc in values.items():
            columns.append({(norm, "intercept"): 1.0, (norm, "slope"): covariate[setting]})
            y.append(acc)
            seeds.append(seed)
    return fit_ols(columns, y, seeds, confidence)
