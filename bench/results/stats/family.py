"""A family of tests judged together: Holm over the family, each member's verdict and the
difference it could detect at Holm's first threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.results.stats.blocked import Contrast
from bench.results.stats.descriptive import Seeds
from bench.results.stats.power import detectable_difference
from bench.results.stats.significance import (
    BETTER,
    WORSE,
    Comparison,
    Trend,
    compare,
    holm,
    verdict,
)


@dataclass(frozen=True)
class Judged:
    """One member of a family of tests, judged with the others.

    Attributes:
        test: The member's test (a comparison with its reference, a slope's test, or a
            blocked model's contrast).
        p_holm: Its Holm-corrected p-value; None when not tested.
        verdict: ``BETTER``, ``WORSE``, ``NO_DIFFERENCE`` or ``NOT_TESTED`` (see
            :func:`~bench.results.stats.significance.verdict`).
        detectable: Smallest true difference (or slope) its test finds with 80% power at level
            alpha / m, m the family's tested members; None when not tested.
        p_exact_holm: The Holm-corrected sign-flip p-value (over the members that have one);
            None without one.
    """

    test: Comparison | Trend | Contrast
    p_holm: float | None
    verdict: str
    detectable: float | None
    p_exact_holm: float | None = None

    def normality_carries(self, alpha: float) -> bool:
        """Whether the verdict is significant by the t-test but not by the exact sign-flip
        test of the same differences at the same family-wise level: then the t-test's
        normality assumption decides it."""
        return (
            self.verdict in (BETTER, WORSE)
            and self.p_exact_holm is not None
            and self.p_exact_holm > alpha
        )


def judge_family(tests: Sequence[Comparison | Trend | Contrast], alpha: float) -> list[Judged]:
    """Holm-correct a family of tests, and give each its verdict and detectable difference.

    The detectable difference is taken at alpha / m, Holm's first threshold, which a verdict
    must pass when a single member differs: the verdicts' power is at least that.

    Args:
        tests: The family, in the order the results are wanted.
        alpha: Family-wise significance level.

    Returns:
        One judgement per test, in the input order.
    """
    adjusted = holm([t.pvalue for t in tests])
    exact = holm([getattr(t, "exact_p", None) for t in tests])
    m = sum(p is not None for p in adjusted)
    return [
        Judged(
            test=test,
            p_holm=p,
            verdict=verdict(test, p, alpha),
            detectable=detectable_difference(test.se, test.df, alpha / m)
            if m and test.tested
            else None,
            p_exact_holm=e,
        )
        for test, p, e in zip(tests, adjusted, exact, strict=True)
    ]


def compare_family(
    members: Sequence[tuple[Seeds, Seeds]], alpha: float, confidence: float = 0.95
) -> list[Judged]:
    """Compare each member with its reference (:func:`compare`), then judge them as one family.

    Args:
        members: ``(values, reference)`` accuracy per seed for each member.
        alpha: Family-wise significance level.
        confidence: Confidence level of the comparisons' intervals.

    Returns:
        One judgement per member, in the input order.
    """
    return judge_family([compare(v, ref, confidence) for v, ref in members], alpha)
