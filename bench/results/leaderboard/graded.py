"""Table cells for the primary analysis: failures with their exact interval, the sign-flip p
beside the t-test, the equivalence statement and the graded evidence beside a verdict."""

from __future__ import annotations

from bench.results.leaderboard.markdown import NA, pvalue_text
from bench.results.stats import NO_DIFFERENCE, NormResult
from bench.results.stats.itt import FailureRate


def failures_text(rate: FailureRate | None) -> str:
    """``1/5 (0.5–71.6%)``: failures over attempted runs, with the rate's Clopper-Pearson
    interval (its level is in the column's name, so the cell stays narrow)."""
    if rate is None:
        return NA
    return f"{rate.failures}/{rate.attempted} ({100 * rate.low:.1f}–{100 * rate.high:.1f}%)"


def exact_p_text(result: NormResult) -> str:
    """The Holm-corrected sign-flip p-value, marked when the t-test's verdict rests on
    normality (the exact test at the same level disagrees); — without one."""
    if result.p_exact_holm is None:
        return NA
    note = " (verdict rests on normality)" if result.normality_carries else ""
    return pvalue_text(result.p_exact_holm) + note


def equivalence_text(result: NormResult, alpha: float) -> str:
    """Where there is no significant difference: whether TOST shows the difference within the
    ROPE at ``alpha`` (equivalent) or not; — elsewhere."""
    evidence = result.evidence
    if result.verdict != NO_DIFFERENCE or evidence is None:
        return NA
    shown = "equivalent" if evidence.equivalent(alpha) else "not shown equivalent"
    return f"{shown} (p {pvalue_text(evidence.tost_p)})"


def evidence_text(result: NormResult) -> str:
    """``0.01 / 0.12 / 0.87``: posterior probability that the difference is below, inside and
    above the ROPE."""
    e = result.evidence
    if e is None:
        return NA
    return f"{e.below:.2f} / {e.inside:.2f} / {e.above:.2f}"
