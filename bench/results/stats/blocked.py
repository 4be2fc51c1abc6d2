"""Blocked linear models of a sweep: accuracy ~ setting + seed block for one norm (or for the
per-seed differences of two norms), fitted by least squares, with contrasts and trend slopes."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.results.stats.descriptive import ZERO_SD, t_quantile

#: Accuracy (or a paired difference) per seed at each setting of a swept key.
Series = Mapping[Hashable, Mapping[Hashable, float]]


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
        estimate, variance = _snapped(c @ self.beta), _snapped(c @ self.cov @ c)
        if not math.isfinite(variance) or variance < 0:
            return None
        se = math.sqrt(variance)
        if se < ZERO_SD:
            return Contrast(estimate, 0.0, 1.0 if abs(estimate) < ZERO_SD else 0.0, 0.0, self.df)
        pvalue = float(2 * sps.t.sf(abs(estimate) / se, self.df))
        half_width = t_quantile(self.confidence, self.df) * se
        return Contrast(estimate, half_width, pvalue, se, float(self.df))


def _snapped(value: float) -> float:
    """``value`` to 12 significant digits: a published number must not depend on the machine
    that rebuilt it, and the last bits of a least-squares solve do (LAPACK's kernels differ
    between CPUs). An exact tie such as a difference of 0.03805 (means of accuracies counted
    in 1/10,000ths) came out a few ulps either side of it and printed as +3.80 on one machine
    and +3.81 on another; snapped, it is the same double on both. Twelve digits keep the
    solve's error (about 1e-15 relative) out and every digit a report shows in."""
    return float(f"{float(value):.12g}")


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


def paired_differences(series: Series, reference: Series) -> dict:
    """Per setting, each seed's accuracy minus the reference norm's with the same seed (the
    seeds both ran at that setting): the series whose model tests one norm against another."""
    return {
        setting: {
            seed: acc - reference[setting][seed]
            for seed, acc in seeds.items()
            if seed in reference.get(setting, {})
        }
        for setting, seeds in series.items()
        if setting in reference
    }


def _observations(series: Series) -> list[tuple[Hashable, Hashable, float]]:
    """(setting, seed, accuracy) sorted by setting then seed: the series arrive in records-file
    order, and least squares over rows in another order differs in the last bits."""
    return [
        (setting, seed, series[setting][seed])
        for setting in sorted(series, key=repr)
        for seed in sorted(series[setting], key=repr)
    ]


def setting_model(series: Series, confidence: float = 0.95) -> Fit:
    """y ~ one mean per setting + seed block; the columns are the settings.

    Fitted per norm (or per pair of norms, on their paired differences) rather than over all
    norms at once, so each norm keeps its own error variance and its own seed effects: norms'
    spreads differ several-fold (a norm that sometimes fails), and a seed's offset differs
    between norms, so pooling either would move one norm's verdicts with another's noise.
    """
    columns, y, seeds = [], [], []
    for setting, seed, acc in _observations(series):
        columns.append({setting: 1.0})
        y.append(acc)
        seeds.append(seed)
    return fit_ols(columns, y, seeds, confidence)


def trend_model(
    series: Series, covariate: Mapping[Hashable, float], confidence: float = 0.95
) -> Fit:
    """y ~ intercept + slope * covariate + seed block: one straight line with seed blocks;
    columns ``"intercept"`` and ``"slope"``. As :func:`setting_model`, fitted per norm or on a
    pair's paired differences (then the slope is the interaction: how much faster one norm
    gains than the other)."""
    columns, y, seeds = [], [], []
    for setting, seed, acc in _observations(series):
        columns.append({"intercept": 1.0, "slope": covariate[setting]})
        y.append(acc)
        seeds.append(seed)
    return fit_ols(columns, y, seeds, confidence)
