"""Power of the t-tests: detectable differences and the seeds a difference would need."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import optimize
from scipy import stats as sps

from bench.results.stats.descriptive import ZERO_SD
from bench.results.stats.significance import PAIRED, Comparison

#: Power at which detectable differences are reported.
POWER = 0.8
#: The difference (a fraction: 1 percentage point) for which the seeds needed are reported.
ONE_PP = 0.01
#: The most seeds :func:`seeds_needed` looks at; beyond it the answer is None.
MAX_SEEDS = 10_000


def t_test_power(noncentrality: float, df: float, level: float) -> float:
    """Power of a two-sided t-test at ``level``: ``P(|T| > t(1 - level/2, df))``, T ~ t'(df, nc).

    The statistic of a t-test whose true difference is d, with standard error se, is noncentral
    t with ``nc = d / se`` (exact for the paired test; for Welch's, with the variances taken as
    known). The lower tail is computed as ``nct.sf(tc, df, -nc)``: ``nct.cdf(-tc, df, nc)``
    returns nan far in the tail for small df.

    Args:
        noncentrality: The noncentrality parameter d / se.
        df: Degrees of freedom of the test.
        level: Two-sided significance level of the single test.

    Returns:
        The probability that the test rejects.
    """
    critical = float(sps.t.ppf(1.0 - level / 2.0, df))
    return float(sps.nct.sf(critical, df, noncentrality) + sps.nct.sf(critical, df, -noncentrality))


def detectable_difference(
    se: float | None, df: float | None, level: float, power: float = POWER
) -> float | None:
    """Smallest true difference a two-sided t-test at ``level`` finds with probability ``power``.

    Solves ``t_test_power(d / se, df, level) = power`` for d (Brent's method on the
    noncentrality, which the power increases with). The standard error is the one observed, so
    the answer is an estimate: with few seeds the observed spread is itself uncertain.

    Args:
        se: Standard error of the difference (as the comparison estimated it); None: not tested.
        df: Degrees of freedom of the test; None only when ``se`` is None or 0.
        level: Two-sided level of the single test (the verdicts use alpha / m, see
            :func:`analyse_backbone`).
        power: Target power, in (level, 1).

    Returns:
        The difference, in the units of the data (a fraction); 0 when ``se`` is 0 (zero spread:
        any non-zero difference gives p = 0); None when ``se`` is None.
    """
    if se is None:
        return None
    if se < ZERO_SD or df is None:
        return 0.0
    return _noncentrality_for_power(float(df), level, power) * se


@functools.lru_cache(maxsize=1024)
def _noncentrality_for_power(df: float, level: float, power: float) -> float:
    """The noncentrality at which the two-sided t-test at ``level`` has power ``power``.

    Cached: it depends on the design only, and a report or a simulation asks for the same few.
    """
    high = 1.0
    while t_test_power(high, df, level) < power:
        high *= 2.0
    return float(
        optimize.brentq(lambda x: t_test_power(x, df, level) - power, 0.0, high, xtol=1e-10)
    )


def paired_power(diff: float, sd: float, n: int, level: float) -> float:
    """Power of the paired t-test at ``level`` with n pairs of mean ``diff`` and sd ``sd``."""
    if sd < ZERO_SD:
        return 1.0 if abs(diff) >= ZERO_SD else level
    return t_test_power(diff * math.sqrt(n) / sd, n - 1, level)


def seeds_needed(
    diff: float, sd: float, level: float, power: float = POWER, max_seeds: int = MAX_SEEDS
) -> int | None:
    """Fewest seeds (pairs) with which the paired t-test at ``level`` finds ``diff`` at ``power``.

    The power of the paired test grows with n (larger noncentrality and smaller critical value),
    so the answer is found by doubling then bisecting on n >= 2.

    Args:
        diff: The true difference to detect (a fraction).
        sd: Standard deviation of the paired differences (a fraction).
        level: Two-sided level of the single test.
        power: Target power.
        max_seeds: Largest n considered.

    Returns:
        The smallest n >= 2 reaching ``power``, or None when ``max_seeds`` do not.
    """
    if paired_power(diff, sd, max_seeds, level) < power:
        return None
    low, high = 1, 2  # invariant: power(low) < target (n = 1 gives no test), power(high) >= it
    while paired_power(diff, sd, high, level) < power:
        low, high = high, min(2 * high, max_seeds)
    while high - low > 1:
        middle = (low + high) // 2
        if paired_power(diff, sd, middle, level) >= power:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class Power:
    """What the verdicts of one backbone could have seen, from the paired comparisons' spread.

    Attributes:
        level: Two-sided level of each test, ``alpha / m``: the threshold of Holm's first step.
            Holm rejects every hypothesis that Bonferroni at alpha / m rejects, so the power at
            this level is a lower bound on the verdicts' power (and equals it when one norm
            differs and the others do not).
        m: Number of tested comparisons with the baseline (the Holm family).
        n: Seeds (pairs) the power is computed at: the most any paired comparison had.
        sd: Pooled standard deviation of the paired differences (a fraction):
            ``sqrt(sum((n_i - 1) * sd_i**2) / sum(n_i - 1))`` over the paired comparisons.
        sd_df: Degrees of freedom behind ``sd``, ``sum(n_i - 1)``.
        detectable: Smallest difference (a fraction) found with probability ``power`` at n pairs.
        seeds_for_one_pp: Fewest seeds that find a 1 pp difference with probability ``power``;
            None beyond ``MAX_SEEDS``.
        power: The target power.
    """

    level: float
    m: int
    n: int
    sd: float
    sd_df: int
    detectable: float
    seeds_for_one_pp: int | None
    power: float = POWER


def backbone_power(
    tested: Sequence[Comparison], alpha: float, m: int | None = None
) -> Power | None:
    """The power statement of one backbone, from its comparisons with the baseline.

    The spread is pooled over the paired comparisons (Welch comparisons have no paired spread);
    the comparisons share the baseline's runs, so the pooled sd is a summary of the typical
    spread, not an estimate from independent samples. Each norm's own detectable difference is
    in :attr:`NormResult.detectable`.

    Args:
        tested: The tested comparisons with the baseline (the table's).
        alpha: Family-wise significance level.
        m: The Holm family's size, when the family spans more tables than this one's
            comparisons (`bench.results.stats.backbone.judge_jointly`); default ``len(tested)``.

    Returns:
        The power, or None when no comparison was paired.
    """
    paired = [c for c in tested if c.test == PAIRED and c.se is not None]
    if not paired:
        return None
    m = len(tested) if m is None else m
    level = alpha / m
    sd_df = sum(c.n - 1 for c in paired)
    sd = math.sqrt(math.fsum((c.n - 1) * c.n * c.se**2 for c in paired) / sd_df)
    n = max(c.n for c in paired)
    return Power(
        level=level,
        m=m,
        n=n,
        sd=sd,
        sd_df=sd_df,
        detectable=float(detectable_difference(sd / math.sqrt(n), n - 1, level) or 0.0),
        seeds_for_one_pp=seeds_needed(ONE_PP, sd, level),
    )
