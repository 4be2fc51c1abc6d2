"""Statistics over seeds: intervals, tests against the baseline, Holm, rank groups, Friedman.

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

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
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
    """

    diff: float | None
    half_width: float | None
    pvalue: float | None
    test: str | None
    n: int
    reason: str | None = None

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
            return Comparison(diff, 0.0, _degenerate_p(diff), PAIRED, n)
        pvalue = float(sps.ttest_rel(x, y).pvalue)
        half_width = _t_quantile(confidence, n - 1) * sd / math.sqrt(n)
        return Comparison(diff, half_width, pvalue, PAIRED, n)

    x, y = _values(values), _values(reference)
    diff = float(x.mean() - y.mean()) if x.size and y.size else None
    n = int(min(x.size, y.size))
    if n < 2:
        return Comparison(diff, None, None, None, n, reason="n<2")
    var_x, var_y = float(x.var(ddof=1)), float(y.var(ddof=1))
    se2 = var_x / x.size + var_y / y.size
    if math.sqrt(se2) < _ZERO_SD:
        return Comparison(diff, 0.0, _degenerate_p(diff), WELCH, n)
    pvalue = float(sps.ttest_ind(x, y, equal_var=False).pvalue)
    df = se2**2 / ((var_x / x.size) ** 2 / (x.size - 1) + (var_y / y.size) ** 2 / (y.size - 1))
    half_width = _t_quantile(confidence, df) * math.sqrt(se2)
    return Comparison(diff, half_width, pvalue, WELCH, n)


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


def rank_groups(
    acc_by_norm: Mapping[str, Seeds], alpha: float = 0.05, confidence: float = 0.95
) -> dict[str, int | None]:
    """Rank groups: the norms not significantly different from the best share rank 1.

    The rule:

    1. Only norms with at least 2 seeds can be tested; the others get None ("not ranked").
    2. The best norm is the testable one with the highest mean accuracy (ties: first by name).
    3. Every pair of testable norms is compared with :func:`compare`, and the p-values are
       Holm-corrected across ALL pairs. The best norm is picked after seeing the data, so testing
       only "each norm vs the best" would test the largest observed gaps and inflate false
       "worse than best" findings; correcting over all pairs keeps the family-wise error at
       alpha whichever norm turns out best.
    4. Rank 1: the best norm and each testable norm whose corrected p against it is > alpha.
    5. Any other testable norm gets its 1-based position in the order of mean accuracy (over all
       norms with values, as in the leaderboard table), e.g. 1, 1, 3, 4.

    Rank 1 is a statement about each norm against the best; it need not be contiguous in mean
    order (a noisier norm can share rank 1 while a steadier one with a higher mean does not).

    Args:
        acc_by_norm: Accuracy per seed for each norm of one backbone.
        alpha: Family-wise significance level.
        confidence: Confidence level of the intervals (does not affect the groups).

    Returns:
        The rank group of each norm that has values; None for norms that could not be tested.
    """
    order = _by_mean(acc_by_norm)
    testable = [norm for norm in order if len(acc_by_norm[norm]) >= 2]
    groups: dict[str, int | None] = dict.fromkeys(order)
    if not testable:
        return groups
    best = testable[0]
    pairs = list(combinations(testable, 2))
    raw = [compare(acc_by_norm[a], acc_by_norm[b], confidence) for a, b in pairs]
    adjusted = holm([c.pvalue for c in raw])
    p_vs_best = {
        (b if a == best else a): p
        for (a, b), p in zip(pairs, adjusted, strict=True)
        if best in (a, b)
    }
    for position, norm in enumerate(order, start=1):
        if norm not in testable:
            continue
        p = p_vs_best.get(norm)
        tied = norm == best or p is None or p > alpha
        groups[norm] = 1 if tied else position
    return groups


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
        rank_group: See :func:`rank_groups`; None when not ranked.
    """

    norm: str
    accuracy: MeanCI
    vs_baseline: Comparison | None
    p_holm: float | None
    verdict: str
    rank_group: int | None


@dataclass(frozen=True)
class BackboneAnalysis:
    """The statistics of one backbone's leaderboard.

    Attributes:
        baseline: The baseline norm's spec string.
        has_baseline: Whether the baseline has at least one value on this backbone.
        alpha: Family-wise significance level used.
        results: One entry per norm with values, best mean first (ties by name).
    """

    baseline: str
    has_baseline: bool
    alpha: float
    results: tuple[NormResult, ...]

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
    p-values of those comparisons form one Holm family. Rank groups come from
    :func:`rank_groups`. Norms with no values are left out (the caller lists them as failed).

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
    groups = rank_groups(acc_by_norm, alpha, confidence)
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
                rank_group=groups[norm],
            )
        )
    return BackboneAnalysis(baseline, has_baseline, alpha, tuple(results))


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
