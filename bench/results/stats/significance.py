"""Tests of a difference: paired or Welch t-test, the slope test, Holm's correction, verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.results.stats.blocked import Contrast
from bench.results.stats.descriptive import ZERO_SD, Seeds, degenerate_p, t_quantile, values_of
from bench.results.stats.exact import sign_flip_p

#: Names of the tests, as they appear in results and reports.
PAIRED = "paired t-test"
WELCH = "Welch t-test"

#: Verdicts of a comparison against the baseline.
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
BASELINE = "baseline"
NOT_TESTED = "not tested (n<2)"
NO_BASELINE = "not compared (no baseline runs)"


@dataclass(frozen=True)
class Comparison:
    """One norm's accuracy minus a reference norm's (the baseline, or the best norm).

    Attributes:
        diff: Estimated difference (norm minus reference): the mean of the per-seed differences
            for the paired test, the difference of means otherwise. None when a side is empty.
        half_width: Half-width of the interval around ``diff``; None when not tested.
        pvalue: Two-sided p-value before any correction; None when not tested.
        test: ``PAIRED``, ``WELCH`` or None when not tested.
        n: Pairs used by the paired test, else the smaller of the two sample sizes.
        reason: Why no test was done, else None.
        se: Standard error of ``diff`` (sd of the differences / sqrt(n) for the paired test, the
            Welch standard error otherwise); None when not tested.
        df: Degrees of freedom of the test (n - 1, or Welch-Satterthwaite); None when not tested
            or when the spread is zero.
        exact_p: For the paired test, the exact sign-flip permutation p-value of the same
            differences (:func:`~bench.results.stats.exact.sign_flip_p`), which does not
            assume normality; None otherwise.
    """

    diff: float | None
    half_width: float | None
    pvalue: float | None
    test: str | None
    n: int
    reason: str | None = None
    se: float | None = None
    df: float | None = None
    exact_p: float | None = None

    @property
    def tested(self) -> bool:
        """Whether a test was done (and ``pvalue`` is set)."""
        return self.test is not None


def compare(values: Seeds, reference: Seeds, confidence: float = 0.95) -> Comparison:
    """Test whether a norm's accuracy differs from a reference norm's.

    The test is chosen from the seeds the two share:

    - at least 2 shared seeds: paired t-test (``scipy.stats.ttest_rel``) on the shared seeds
      only; seeds run by one norm alone are left out, so the estimate is the mean per-seed
      difference on the shared seeds; the exact sign-flip p-value of the same differences is
      given beside it;
    - otherwise, when both sides have at least 2 seeds: Welch's unpaired t-test
      (``scipy.stats.ttest_ind(equal_var=False)``), whose interval uses the
      Welch-Satterthwaite degrees of freedom;
    - otherwise no test (``reason`` says so).

    When the differences (paired) or both samples (Welch) have zero spread, the p-value is the
    limit of the t-test: 1 if the difference is 0, else 0, and the half-width is 0.

    Args:
        values: Accuracy per seed of the norm under test.
        reference: Accuracy per seed of the reference norm.
        confidence: Confidence level of the interval.

    Returns:
        The difference (values minus reference), its interval and the raw two-sided p-value.
    """
    shared = sorted(set(values) & set(reference), key=repr)
    if len(shared) >= 2:
        x = np.array([values[s] for s in shared], dtype=float)
        y = np.array([reference[s] for s in shared], dtype=float)
        d = x - y
        n = len(d)
        diff = float(d.mean())
        sd = float(d.std(ddof=1))
        exact = sign_flip_p(d)
        if sd < ZERO_SD:
            return Comparison(diff, 0.0, degenerate_p(diff), PAIRED, n, se=0.0, exact_p=exact)
        pvalue = float(sps.ttest_rel(x, y).pvalue)
        se = sd / math.sqrt(n)
        half_width = t_quantile(confidence, n - 1) * se
        return Comparison(
            diff, half_width, pvalue, PAIRED, n, se=se, df=float(n - 1), exact_p=exact
        )

    x, y = values_of(values), values_of(reference)
    diff = float(x.mean() - y.mean()) if x.size and y.size else None
    n = int(min(x.size, y.size))
    if n < 2:
        return Comparison(diff, None, None, None, n, reason="n<2")
    var_x, var_y = float(x.var(ddof=1)), float(y.var(ddof=1))
    se2 = var_x / x.size + var_y / y.size
    if math.sqrt(se2) < ZERO_SD:
        return Comparison(diff, 0.0, degenerate_p(diff), WELCH, n, se=0.0)
    pvalue = float(sps.ttest_ind(x, y, equal_var=False).pvalue)
    df = se2**2 / ((var_x / x.size) ** 2 / (x.size - 1) + (var_y / y.size) ** 2 / (y.size - 1))
    half_width = t_quantile(confidence, df) * math.sqrt(se2)
    return Comparison(diff, half_width, pvalue, WELCH, n, se=math.sqrt(se2), df=float(df))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (controls the family-wise error rate).

    Sort the m tested p-values ascending, p(1) <= ... <= p(m); the adjusted value of p(i) is
    ``max over j <= i of min(1, (m - j + 1) * p(j))``. Rejecting where the adjusted value is
    <= alpha is Holm's procedure at level alpha. Holm assumes nothing about dependence between
    the tests.

    Args:
        pvalues: Raw p-values; None marks a comparison that was not tested. It is left out of
            the family (it does not count in m) and stays None.

    Returns:
        Adjusted p-values in the input order.
    """
    tested = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(tested)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    # Stable sort: tied p-values keep their input order, which does not change the result.
    for rank, (p, i) in enumerate(sorted(tested, key=lambda pair: pair[0])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Trend:
    """The least-squares slope of accuracy against a covariate (log2 epsilon), with its test.

    Attributes:
        slope: Change in accuracy per unit of the covariate (per doubling of epsilon).
        half_width: Half-width of the two-sided t-interval; None when not tested.
        pvalue: Two-sided p-value of slope = 0 (t with n - 2 df); None when not tested.
        se: Standard error of the slope; None when not tested.
        df: Degrees of freedom, n - 2; None when not tested.
        n: Points (one per run).
        reason: Why no test was done, else None.
    """

    slope: float | None
    half_width: float | None
    pvalue: float | None
    se: float | None
    df: float | None
    n: int
    reason: str | None = None

    @property
    def tested(self) -> bool:
        """Whether a test was done (and ``pvalue`` is set)."""
        return self.pvalue is not None


def trend(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> Trend:
    """Ordinary least-squares slope of ``y`` on ``x`` (``scipy.stats.linregress``) with a
    t-interval and the two-sided test of a zero slope.

    Every run is one point, so seeds at the same ``x`` are replicates: with 2 seeds at each of
    4 budgets there are 8 points and 6 degrees of freedom, where comparing two budgets alone
    has 1. The test assumes a straight line in ``x`` and independent normal errors of one
    variance; the seeds' shared data order is not modelled (in a balanced design, where every
    seed ran at every x, leaving it out is conservative).

    Args:
        x: The covariate per run.
        y: The accuracy per run.
        confidence: Confidence level of the interval.

    Returns:
        The slope with its interval, or why not (fewer than 3 points, or one distinct x).
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    # The runs in sorted order: they arrive in records-file order, and the fit's sums in
    # another order differ in the last bit.
    order = np.lexsort((ys, xs))
    xs, ys = xs[order], ys[order]
    n = int(xs.size)
    if n < 3 or np.ptp(xs) == 0:
        why = "fewer than 3 runs" if n < 3 else "one value of the covariate"
        return Trend(None, None, None, None, None, n, reason=why)
    fit = sps.linregress(xs, ys)
    slope, se, df = float(fit.slope), float(fit.stderr), float(n - 2)
    if se < ZERO_SD:
        return Trend(slope, 0.0, degenerate_p(slope), 0.0, df, n)
    half_width = t_quantile(confidence, df) * se
    return Trend(slope, half_width, float(fit.pvalue), se, df, n)


def verdict(test: Comparison | Trend | Contrast, p_adjusted: float | None, alpha: float) -> str:
    """Better, worse or no significant difference, from a corrected p-value.

    A direction is never given on a non-significant difference: it is given only when
    ``p_adjusted <= alpha``.

    Args:
        test: The comparison against the reference, a slope's test, or a blocked model's
            contrast.
        p_adjusted: Its corrected p-value (None when not tested).
        alpha: Family-wise significance level.

    Returns:
        One of ``BETTER``, ``WORSE``, ``NO_DIFFERENCE`` or ``NOT_TESTED``.
    """
    if isinstance(test, Contrast):
        estimate: float | None = test.estimate
    else:
        estimate = test.diff if isinstance(test, Comparison) else test.slope
    if not test.tested or p_adjusted is None or estimate is None:
        return NOT_TESTED
    if p_adjusted <= alpha and estimate != 0:
        return BETTER if estimate > 0 else WORSE
    return NO_DIFFERENCE
