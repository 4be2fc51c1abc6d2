"""Statistics over seeds: intervals, tests, Holm, letter displays, power, rank agreement, Friedman.

Every function here works on plain numbers (one accuracy per seed) and never imports torch.
Shared assumptions, stated once:

- The per-seed accuracies of one (backbone, norm) cell are independent draws from a normal
  distribution; seeds are the only source of replication. t-based intervals and tests rely on
  this; with few seeds they are approximate for non-normal data.
- Runs of two norms with the same seed share whatever that seed fixes (data order, sampling and
  noise streams), so their results are paired by seed when possible: a paired test removes the
  variance the seed shares across norms and is valid (if less useful) when it shares none.
- A family of tests is one backbone: p-values are Holm-corrected within a backbone, never
  across backbones (each backbone's leaderboard is read on its own).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import optimize
from scipy import stats as sps

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

# Below this a standard deviation is rounding noise of identical values, not spread.
_ZERO_SD = 1e-12

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
    """

    diff: float | None
    half_width: float | None
    pvalue: float | None
    test: str | None
    n: int
    reason: str | None = None
    se: float | None = None
    df: float | None = None

    @property
    def tested(self) -> bool:
        """Whether a test was done (and ``pvalue`` is set)."""
        return self.test is not None


def _values(seeds: Seeds) -> np.ndarray:
    """The values of a seed map as a float array, in seed order (for reproducible arithmetic)."""
    return np.array([seeds[s] for s in sorted(seeds, key=repr)], dtype=float)


def _t_quantile(confidence: float, df: float) -> float:
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
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, None, n, confidence)
    sd = float(x.std(ddof=1))
    half_width = 0.0 if sd < _ZERO_SD else _t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return MeanCI(mean, half_width, n, confidence)


def _degenerate_p(diff: float) -> float:
    """p-value when the spread is zero: the limit of the t-test (|t| -> inf unless diff is 0)."""
    return 1.0 if abs(diff) < _ZERO_SD else 0.0


def compare(values: Seeds, reference: Seeds, confidence: float = 0.95) -> Comparison:
    """Test whether a norm's accuracy differs from a reference norm's.

    The test is chosen from the seeds the two share:

    - at least 2 shared seeds: paired t-test (``scipy.stats.ttest_rel``) on the shared seeds
      only; seeds run by one norm alone are left out, so the estimate is the mean per-seed
      difference on the shared seeds;
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
        if sd < _ZERO_SD:
            return Comparison(diff, 0.0, _degenerate_p(diff), PAIRED, n, se=0.0)
        pvalue = float(sps.ttest_rel(x, y).pvalue)
        se = sd / math.sqrt(n)
        half_width = _t_quantile(confidence, n - 1) * se
        return Comparison(diff, half_width, pvalue, PAIRED, n, se=se, df=float(n - 1))

    x, y = _values(values), _values(reference)
    diff = float(x.mean() - y.mean()) if x.size and y.size else None
    n = int(min(x.size, y.size))
    if n < 2:
        return Comparison(diff, None, None, None, n, reason="n<2")
    var_x, var_y = float(x.var(ddof=1)), float(y.var(ddof=1))
    se2 = var_x / x.size + var_y / y.size
    if math.sqrt(se2) < _ZERO_SD:
        return Comparison(diff, 0.0, _degenerate_p(diff), WELCH, n, se=0.0)
    pvalue = float(sps.ttest_ind(x, y, equal_var=False).pvalue)
    df = se2**2 / ((var_x / x.size) ** 2 / (x.size - 1) + (var_y / y.size) ** 2 / (y.size - 1))
    half_width = _t_quantile(confidence, df) * math.sqrt(se2)
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


def verdict(comparison: Comparison, p_adjusted: float | None, alpha: float) -> str:
    """Better, worse or no significant difference, from a corrected p-value.

    A norm is never called better or worse on a non-significant difference: the direction is
    given only when ``p_adjusted <= alpha``.

    Args:
        comparison: The comparison against the baseline.
        p_adjusted: Its corrected p-value (None when not tested).
        alpha: Family-wise significance level.

    Returns:
        One of ``BETTER``, ``WORSE``, ``NO_DIFFERENCE`` or ``NOT_TESTED``.
    """
    if not comparison.tested or p_adjusted is None or comparison.diff is None:
        return NOT_TESTED
    if p_adjusted <= alpha and comparison.diff != 0:
        return BETTER if comparison.diff > 0 else WORSE
    return NO_DIFFERENCE


def _by_mean(acc_by_norm: Mapping[str, Seeds]) -> list[str]:
    """Norms with at least one value, best mean first; ties by name so the order is stable."""
    means = {norm: float(_values(v).mean()) for norm, v in acc_by_norm.items() if v}
    return sorted(means, key=lambda norm: (-means[norm], norm))


def _letter(index: int) -> str:
    """The index-th letter of a display: a-z, then A-Z, then numbered (more than 52 groups)."""
    if index < 26:
        return chr(ord("a") + index)
    if index < 52:
        return chr(ord("A") + index - 26)
    return f"({index + 1})"


def compact_letters(order: Sequence[str], different: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A compact letter display: two names share a letter iff their pair is not in ``different``.

    Piepho's insert-absorb algorithm (J. Comput. Graph. Stat. 13, 2004): start from one group
    holding every name; for each significant pair (i, j), split each group holding both into a
    copy without i and a copy without j; then drop every group contained in another. Splitting
    separates only the pair (i, j), so a non-significant pair always stays together somewhere,
    and the surviving groups are the maximal sets of mutually non-different names. Groups are
    lettered in ``order`` (best mean first): the group holding the earliest name gets ``a``;
    among groups with the same earliest name, the one whose next name comes first, and so on.

    Args:
        order: The names, best mean first.
        different: Pairs of names that differ significantly (either order).

    Returns:
        Each name's letters, in alphabetical order (``"ab"``).
    """
    position = {name: i for i, name in enumerate(order)}
    groups: set[frozenset[int]] = {frozenset(range(len(order)))}
    for a, b in sorted({tuple(sorted((position[a], position[b]))) for a, b in different}):
        split: set[frozenset[int]] = set()
        for group in groups:
            if a in group and b in group:
                split |= {group - {a}, group - {b}}
            else:
                split.add(group)
        groups = {g for g in split if g and not any(g < h for h in split)}
    lettered = sorted(groups, key=sorted)
    return {
        name: "".join(_letter(k) for k, group in enumerate(lettered) if position[name] in group)
        for name in order
    }


def letter_display(
    acc_by_norm: Mapping[str, Seeds], alpha: float = 0.05, confidence: float = 0.95
) -> dict[str, str | None]:
    """Compact letter display of a backbone: norms sharing a letter are not significantly different.

    The rule:

    1. Only norms with at least 2 seeds can be tested; the others get None ("not ranked").
    2. Every pair of testable norms is compared with :func:`compare` (paired t-test on shared
       seeds, else Welch), and the p-values are Holm-corrected across ALL pairs of the backbone:
       the family is every pairwise statement the display makes, so the chance of any false
       "differs" anywhere in the display is at most alpha.
    3. Pairs with a corrected p <= alpha are "different"; :func:`compact_letters` turns them into
       letters, assigned in order of mean accuracy (the best norm's first group is ``a``).

    Non-significance is not transitive: with a ~ b and b ~ c but a !~ c, a is "a", b "ab", c "b".

    Args:
        acc_by_norm: Accuracy per seed for each norm of one backbone.
        alpha: Family-wise significance level.
        confidence: Confidence level of the intervals (does not affect the letters).

    Returns:
        The letters of each norm that has values; None for norms that could not be tested.
    """
    order = _by_mean(acc_by_norm)
    testable = [norm for norm in order if len(acc_by_norm[norm]) >= 2]
    letters: dict[str, str | None] = dict.fromkeys(order)
    if not testable:
        return letters
    pairs = list(combinations(testable, 2))
    raw = [compare(acc_by_norm[a], acc_by_norm[b], confidence).pvalue for a, b in pairs]
    different = [
        pair for pair, p in zip(pairs, holm(raw), strict=True) if p is not None and p <= alpha
    ]
    letters.update(compact_letters(testable, different))
    return letters


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
    if se < _ZERO_SD or df is None:
        return 0.0
    return _noncentrality_for_power(float(df), level, power) * se


def pp_text(fraction: float) -> str:
    """A fraction (of accuracy) in percentage points with two decimals: ``0.0543`` -> ``5.43``."""
    return f"{100 * fraction:.2f}"


def pvalue_text(p: float) -> str:
    """A p-value as a table cell: four decimals, ``<0.0001`` below that."""
    return "<0.0001" if p < 0.0001 else f"{p:.4f}"


def detectable_text(difference: float | None) -> str:
    """A detectable difference (a fraction) as a table cell in percentage points.

    Above 100 pp no change of accuracy could reach it: the cell says ``> 100`` rather than a
    number such as 2195 that reads as if it meant something.
    """
    if difference is None:
        return "—"
    return "> 100" if difference > 1.0 else pp_text(difference)


def difference_text(comparison: Comparison | None) -> str:
    """A comparison's difference with its 95% interval, in percentage points, as a table cell:
    ``+4.61 [+4.00, +5.23]``; ``(no CI, n<2)`` without an interval; ``—`` without a difference."""
    if comparison is None or comparison.diff is None:
        return "—"
    diff = 100 * comparison.diff
    if comparison.half_width is None:
        return f"{diff:+.2f} (no CI, n<2)"
    half = 100 * comparison.half_width
    return f"{diff:+.2f} [{diff - half:+.2f}, {diff + half:+.2f}]"


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
    if sd < _ZERO_SD:
        return 1.0 if abs(diff) >= _ZERO_SD else level
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


def backbone_power(tested: Sequence[Comparison], alpha: float) -> Power | None:
    """The power statement of one backbone, from its comparisons with the baseline.

    The spread is pooled over the paired comparisons (Welch comparisons have no paired spread);
    the comparisons share the baseline's runs, so the pooled sd is a summary of the typical
    spread, not an estimate from independent samples. Each norm's own detectable difference is
    in :attr:`NormResult.detectable`.

    Args:
        tested: The tested comparisons with the baseline (the Holm family).
        alpha: Family-wise significance level.

    Returns:
        The power, or None when no comparison was paired.
    """
    paired = [c for c in tested if c.test == PAIRED and c.se is not None]
    if not paired:
        return None
    level = alpha / len(tested)
    sd_df = sum(c.n - 1 for c in paired)
    sd = math.sqrt(math.fsum((c.n - 1) * c.n * c.se**2 for c in paired) / sd_df)
    n = max(c.n for c in paired)
    return Power(
        level=level,
        m=len(tested),
        n=n,
        sd=sd,
        sd_df=sd_df,
        detectable=float(detectable_difference(sd / math.sqrt(n), n - 1, level) or 0.0),
        seeds_for_one_pp=seeds_needed(ONE_PP, sd, level),
    )


@dataclass(frozen=True)
class NormResult:
    """One norm's line of a backbone's leaderboard.

    Attributes:
        norm: The norm spec string.
        accuracy: Mean accuracy over seeds with its interval.
        vs_baseline: The comparison with the baseline; None for the baseline itself and when
            the baseline has no values.
        p_holm: Holm-corrected p-value of that comparison, or None.
        verdict: ``BASELINE``, ``BETTER``, ``WORSE``, ``NO_DIFFERENCE``, ``NOT_TESTED`` or
            ``NO_BASELINE``.
        letters: See :func:`letter_display`; None when not ranked.
        detectable: Smallest difference from the baseline (as a fraction) this comparison would
            find with 80% power at the verdicts' level (:func:`detectable_difference` on its own
            standard error and degrees of freedom); None when not tested.
    """

    norm: str
    accuracy: MeanCI
    vs_baseline: Comparison | None
    p_holm: float | None
    verdict: str
    letters: str | None
    detectable: float | None = None


@dataclass(frozen=True)
class BackboneAnalysis:
    """The statistics of one backbone's leaderboard.

    Attributes:
        baseline: The baseline norm's spec string.
        has_baseline: Whether the baseline has at least one value on this backbone.
        alpha: Family-wise significance level used.
        results: One entry per norm with values, best mean first (ties by name).
        power: The backbone's power statement (see :func:`backbone_power`), None without a
            paired comparison with the baseline.
    """

    baseline: str
    has_baseline: bool
    alpha: float
    results: tuple[NormResult, ...]
    power: Power | None = None

    @property
    def tests_used(self) -> dict[str, int]:
        """How many comparisons against the baseline used each test."""
        counts: dict[str, int] = {}
        for result in self.results:
            if result.vs_baseline is not None and result.vs_baseline.test is not None:
                counts[result.vs_baseline.test] = counts.get(result.vs_baseline.test, 0) + 1
        return dict(sorted(counts.items()))


def analyse_backbone(
    acc_by_norm: Mapping[str, Seeds],
    baseline: str,
    alpha: float = 0.05,
    confidence: float = 0.95,
) -> BackboneAnalysis:
    """The leaderboard statistics of one backbone.

    Each norm other than the baseline is compared with the baseline (:func:`compare`); the
    p-values of those comparisons form one Holm family. Letters come from
    :func:`letter_display`; the power of the verdicts from :func:`detectable_difference` (per
    norm) and :func:`backbone_power` (pooled), both at the level alpha / m that Holm's first
    step uses for the m tested comparisons. Norms with no values are left out (the caller lists
    them as failed).

    Args:
        acc_by_norm: Accuracy per seed for each norm of the backbone.
        baseline: The baseline norm's spec string; it may be absent from ``acc_by_norm``.
        alpha: Family-wise significance level.
        confidence: Confidence level of the intervals.

    Returns:
        The per-norm results, best mean first.
    """
    order = _by_mean(acc_by_norm)
    has_baseline = baseline in order
    others = [norm for norm in order if norm != baseline]
    comparisons = {
        norm: compare(acc_by_norm[norm], acc_by_norm[baseline], confidence)
        if has_baseline
        else None
        for norm in others
    }
    raw = [c.pvalue if c is not None else None for c in comparisons.values()]
    adjusted = dict(zip(others, holm(raw), strict=True))
    letters = letter_display(acc_by_norm, alpha, confidence)
    tested = [c for c in comparisons.values() if c is not None and c.tested]
    level = alpha / len(tested) if tested else alpha
    results = []
    for norm in order:
        comparison = comparisons.get(norm)
        if norm == baseline:
            label = BASELINE
        elif comparison is None:
            label = NO_BASELINE
        else:
            label = verdict(comparison, adjusted[norm], alpha)
        results.append(
            NormResult(
                norm=norm,
                accuracy=mean_ci(list(_values(acc_by_norm[norm])), confidence),
                vs_baseline=comparison,
                p_holm=adjusted.get(norm),
                verdict=label,
                letters=letters[norm],
                detectable=None
                if comparison is None or not comparison.tested
                else detectable_difference(comparison.se, comparison.df, level),
            )
        )
    return BackboneAnalysis(
        baseline, has_baseline, alpha, tuple(results), backbone_power(tested, alpha)
    )


@dataclass(frozen=True)
class AverageRank:
    """A norm's rank by mean accuracy, averaged over backbones.

    Attributes:
        rank: Average rank (1 = most accurate; ties within a backbone share the average rank).
        n_backbones: Number of backbones the average is over.
    """

    rank: float
    n_backbones: int


def average_ranks(means: Mapping[str, Mapping[str, float]]) -> dict[str, AverageRank]:
    """Average rank of each norm across backbones.

    Within each backbone the norms that have a mean are ranked by it (1 = highest accuracy, tied
    means get the average of their ranks); each norm's ranks are then averaged over the backbones
    where it has a mean. A norm missing on some backbones is ranked among fewer norms there, so
    compare averages over the same number of backbones.

    Args:
        means: Mean accuracy per norm, per backbone (``means[backbone][norm]``).

    Returns:
        The average rank of each norm that appears anywhere, keyed by norm.
    """
    collected: dict[str, list[float]] = {}
    for backbone in sorted(means):
        norms = sorted(means[backbone])
        if not norms:
            continue
        ranks = sps.rankdata([-means[backbone][norm] for norm in norms], method="average")
        for norm, rank in zip(norms, ranks, strict=True):
            collected.setdefault(norm, []).append(float(rank))
    return {
        norm: AverageRank(float(np.mean(ranks)), len(ranks))
        for norm, ranks in sorted(collected.items())
    }


@dataclass(frozen=True)
class FriedmanResult:
    """The Friedman test across backbones, or why it was not run.

    Attributes:
        statistic: The chi-square statistic; None when not run.
        pvalue: Its p-value; None when not run.
        norms: The norms (treatments) in the test.
        backbones: The backbones (blocks) in the test.
        reason: Why the test was not run, else None.
    """

    statistic: float | None
    pvalue: float | None
    norms: tuple[str, ...]
    backbones: tuple[str, ...]
    reason: str | None = None

    @property
    def ran(self) -> bool:
        """Whether the test was run."""
        return self.reason is None


def friedman(means: Mapping[str, Mapping[str, float]]) -> FriedmanResult:
    """Friedman test of "all norms rank alike across backbones" (Demšar, JMLR 2006).

    Blocks are backbones, treatments are norms, the observation is a cell's mean accuracy. The
    test needs a complete table (every norm on every block), at least 3 norms (scipy's
    ``friedmanchisquare`` needs 3 groups) and at least 2 blocks. When some cells are missing,
    the larger (in cells) of two complete tables is used: all norms over the backbones that
    have them all, or all backbones over the norms that every backbone has (ties: more
    backbones). The chi-square approximation is rough with few blocks; read p as indicative.

    Args:
        means: Mean accuracy per norm, per backbone (``means[backbone][norm]``).

    Returns:
        The statistic and p-value with the norms and backbones used, or the reason it was not run.
    """
    backbones = sorted(b for b in means if means[b])
    norms = sorted({norm for b in backbones for norm in means[b]})
    full_blocks = [b for b in backbones if all(norm in means[b] for norm in norms)]
    shared_norms = [norm for norm in norms if all(norm in means[b] for b in backbones)]
    candidates = [(norms, full_blocks), (shared_norms, backbones)]
    usable = [(n, b) for n, b in candidates if len(n) >= 3 and len(b) >= 2]
    if not usable:
        if len(backbones) < 2:
            reason = f"needs >= 2 backbones with ok runs (have {len(backbones)})"
        elif len(norms) < 3:
            reason = f"needs >= 3 norms (have {len(norms)})"
        else:
            reason = (
                f"needs >= 3 norms with ok runs on >= 2 common backbones (all {len(norms)} norms "
                f"on {len(full_blocks)} backbone(s); {len(shared_norms)} norm(s) on all "
                f"{len(backbones)})"
            )
        return FriedmanResult(None, None, tuple(norms), tuple(backbones), reason)
    use_norms, use_blocks = max(usable, key=lambda nb: (len(nb[0]) * len(nb[1]), len(nb[1])))
    # The statistic divides by the tie correction, which is zero when every block is all ties.
    if all(len({means[b][norm] for norm in use_norms}) == 1 for b in use_blocks):
        return FriedmanResult(
            None, None, tuple(use_norms), tuple(use_blocks), "all norms tie on every backbone"
        )
    samples = [[means[b][norm] for b in use_blocks] for norm in use_norms]
    result = sps.friedmanchisquare(*samples)
    return FriedmanResult(
        float(result.statistic), float(result.pvalue), tuple(use_norms), tuple(use_blocks)
    )


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
    n = int(xs.size)
    if n < 3 or np.ptp(xs) == 0:
        why = "fewer than 3 runs" if n < 3 else "one value of the covariate"
        return Trend(None, None, None, None, None, n, reason=why)
    fit = sps.linregress(xs, ys)
    slope, se, df = float(fit.slope), float(fit.stderr), float(n - 2)
    if se < _ZERO_SD:
        return Trend(slope, 0.0, _degenerate_p(slope), 0.0, df, n)
    half_width = _t_quantile(confidence, df) * se
    return Trend(slope, half_width, float(fit.pvalue), se, df, n)


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b between two settings' norm rankings, with a bootstrap interval.

    Attributes:
        tau: Kendall's tau-b between the norms' mean accuracies in the two settings (1: same
            order, -1: reversed); None when not computed or undefined (all means tie).
        low: Lower end of the percentile bootstrap interval, or None.
        high: Upper end, or None.
        norms: The norms ranked (those with ok runs in both settings), sorted by name.
        n_resamples: Bootstrap resamples drawn.
        confidence: Confidence level of the interval.
        reason: Why tau was not computed, else None.
    """

    tau: float | None
    low: float | None
    high: float | None
    norms: tuple[str, ...]
    n_resamples: int
    confidence: float
    reason: str | None = None


#: Resamples of the rank-agreement bootstrap, and the seed of its generator (fixed, so the same
#: records give the same report).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between the last axes of ``x`` and ``y``, vectorised over the others.

    ``sum(sign(x_i - x_j) * sign(y_i - y_j)) / sqrt(sum|sign(x_i - x_j)| * sum|sign(y_i - y_j)|)``
    over pairs i < j: concordant minus discordant pairs over the geometric mean of the pairs
    untied in each, which is tau-b (``scipy.stats.kendalltau``'s default). nan where either
    side is all ties.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(x.shape[-1], 1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    denominator = np.sqrt(np.abs(sx).sum(-1) * np.abs(sy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sx * sy).sum(-1) / denominator, np.nan)


def rank_agreement(
    first: Mapping[str, Seeds],
    second: Mapping[str, Seeds],
    *,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> RankAgreement:
    """Kendall's tau-b between the norm rankings of two settings, with a bootstrap interval.

    The point estimate is tau-b between the norms' mean accuracies in the two settings. The
    interval is a percentile bootstrap over seeds, stratified by cell: each resample redraws,
    with replacement, each (setting, norm) cell's seeds to that cell's own count, independently
    of the other cells, recomputes the means and tau-b; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resampled taus
    (resamples where tau is undefined are dropped). Draws are made with
    ``numpy.random.default_rng(seed)``: for the first setting, then the second, for each norm
    in name order, ``rng.integers(0, n, size=(n_resamples, n))`` indexes the cell's values in
    seed order. A one-seed cell never varies; with 2-3 seeds per cell the bootstrap sees few
    distinct means, so the interval is rough.

    Args:
        first: Accuracy per seed for each norm in the first setting.
        second: The same in the second setting.
        confidence: Confidence level of the interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        tau-b and its interval over the norms with values in both settings, or why not.
    """
    norms = tuple(sorted(n for n in first if first[n] and second.get(n)))
    if len(norms) < 3:
        return RankAgreement(
            None,
            None,
            None,
            norms,
            n_resamples,
            confidence,
            f"needs >= 3 norms with ok runs at both values (have {len(norms)})",
        )
    cells = [[_values(setting[n]) for n in norms] for setting in (first, second)]
    means = [np.array([v.mean() for v in setting]) for setting in cells]
    tau = float(kendall_tau_b(means[0], means[1]))
    if not math.isfinite(tau):
        return RankAgreement(
            None,
            None,
            None,
            norms,
            n_resamples,
            confidence,
            "undefined: every norm has the same mean in one setting",
        )
    rng = np.random.default_rng(seed)
    resampled = [
        np.stack(
            [v[rng.integers(0, v.size, size=(n_resamples, v.size))].mean(axis=1) for v in setting],
            axis=-1,
        )
        for setting in cells
    ]
    taus = kendall_tau_b(resampled[0], resampled[1])
    taus = taus[np.isfinite(taus)]
    if not taus.size:
        return RankAgreement(tau, None, None, norms, n_resamples, confidence)
    tail = 100 * (1 - confidence) / 2
    low, high = (float(q) for q in np.percentile(taus, [tail, 100 - tail]))
    return RankAgreement(tau, low, high, norms, n_resamples, confidence)
