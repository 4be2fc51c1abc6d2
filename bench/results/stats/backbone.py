"""The statistics of one backbone's leaderboard: each norm against the baseline, and letters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from bench.results.stats.descriptive import MeanCI, Seeds, mean_ci, values_of
from bench.results.stats.evidence import DEFAULT_ROPE, Evidence, rope_evidence
from bench.results.stats.family import Judged, compare_family, judge_family
from bench.results.stats.letters import by_mean, letter_display
from bench.results.stats.power import Power, backbone_power
from bench.results.stats.significance import BASELINE, NO_BASELINE, Comparison


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
        p_exact_holm: Holm-corrected exact sign-flip p-value of the same comparison, or None.
        normality_carries: Whether the verdict is significant by the t-test only (the exact
            sign-flip test at the same level is not), so normality decides it.
        evidence: Posterior mass below, inside and above the ROPE and the TOST p-value, or None.
    """

    norm: str
    accuracy: MeanCI
    vs_baseline: Comparison | None
    p_holm: float | None
    verdict: str
    letters: str | None
    detectable: float | None = None
    p_exact_holm: float | None = None
    normality_carries: bool = False
    evidence: Evidence | None = None


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
        family: The tables whose comparisons with the baseline were Holm-corrected together
            with this one's (`judge_jointly`), this one included; empty: this table alone.
        family_m: That joint family's size (its tested comparisons); 0 for this table alone.
    """

    baseline: str
    has_baseline: bool
    alpha: float
    results: tuple[NormResult, ...]
    power: Power | None = None
    family: tuple[str, ...] = ()
    family_m: int = 0

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
    rope: float = DEFAULT_ROPE,
) -> BackboneAnalysis:
    """The leaderboard statistics of one backbone.

    Each norm other than the baseline is compared with the baseline, and the comparisons are
    judged as one Holm family (:func:`compare_family`: verdicts, and each norm's detectable
    difference). Letters come from :func:`letter_display`; the pooled power of the verdicts from
    :func:`backbone_power`; both powers at the level alpha / m that Holm's first step uses for
    the m tested comparisons. Norms with no values are left out (the caller lists
    them as failed).

    Args:
        acc_by_norm: Accuracy per seed for each norm of the backbone.
        baseline: The baseline norm's spec string; it may be absent from ``acc_by_norm``.
        alpha: Family-wise significance level.
        confidence: Confidence level of the intervals.
        rope: Half-width of the region of practical equivalence (a fraction) of each
            comparison's graded evidence (:func:`rope_evidence`).

    Returns:
        The per-norm results, best mean first.
    """
    order = by_mean(acc_by_norm)
    has_baseline = baseline in order
    others = [norm for norm in order if norm != baseline]
    judged = dict(
        zip(
            others,
            compare_family(
                [(acc_by_norm[n], acc_by_norm[baseline]) for n in others], alpha, confidence
            )
            if has_baseline
            else [None] * len(others),
            strict=True,
        )
    )
    letters = letter_display(acc_by_norm, alpha, confidence)
    results = []
    for norm in order:
        judgement = judged.get(norm)
        if norm == baseline:
            label = BASELINE
        elif judgement is None:
            label = NO_BASELINE
        else:
            label = judgement.verdict
        results.append(
            NormResult(
                norm=norm,
                accuracy=mean_ci(list(values_of(acc_by_norm[norm])), confidence),
                vs_baseline=None if judgement is None else judgement.test,
                p_holm=None if judgement is None else judgement.p_holm,
                verdict=label,
                letters=letters[norm],
                detectable=None if judgement is None else judgement.detectable,
                p_exact_holm=None if judgement is None else judgement.p_exact_holm,
                normality_carries=judgement is not None and judgement.normality_carries(alpha),
                evidence=None if judgement is None else rope_evidence(judgement.test, rope),
            )
        )
    tested = [j.test for j in judged.values() if j is not None and j.test.tested]
    return BackboneAnalysis(
        baseline, has_baseline, alpha, tuple(results), backbone_power(tested, alpha)
    )


def judge_jointly(tables: Mapping[str, BackboneAnalysis]) -> dict[str, BackboneAnalysis]:
    """Several tables' comparisons with the baseline judged as one Holm family: the primary
    family of a suite whose primary grid point has a table per backbone, so that the suite's
    primary claims hold at the family-wise level together, not each backbone's at its own.

    Each comparison keeps its test, interval, letters and graded evidence (none depends on the
    family); its Holm p (t-test and sign-flip), verdict and detectable difference are those of
    the joint family, and each table's power line is at alpha / (the joint family's size).

    Args:
        tables: Each table's own analysis (`analyse_backbone`), by table name, all at one alpha.

    Returns:
        The same tables, re-judged, each naming the family's tables (`BackboneAnalysis.family`).
    """
    names = tuple(tables)
    (alpha,) = {a.alpha for a in tables.values()}
    places = [
        (name, i)
        for name in names
        for i, r in enumerate(tables[name].results)
        if r.vs_baseline is not None
    ]
    judged = dict(
        zip(
            places,
            judge_family([tables[n].results[i].vs_baseline for n, i in places], alpha),
            strict=True,
        )
    )
    m = sum(j.p_holm is not None for j in judged.values())
    out = {}
    for name in names:
        analysis = tables[name]
        results = tuple(
            r if (name, i) not in judged else _rejudged(r, judged[(name, i)], alpha)
            for i, r in enumerate(analysis.results)
        )
        tested = [
            r.vs_baseline for r in results if r.vs_baseline is not None and r.vs_baseline.tested
        ]
        out[name] = dataclasses.replace(
            analysis,
            results=results,
            power=backbone_power(tested, alpha, m),
            family=names,
            family_m=m,
        )
    return out


def _rejudged(result: NormResult, judgement: Judged, alpha: float) -> NormResult:
    """A norm's result with the verdict, Holm p-values and detectable difference of the family
    its comparison was judged in."""
    return dataclasses.replace(
        result,
        p_holm=judgement.p_holm,
        verdict=judgement.verdict,
        detectable=judgement.detectable,
        p_exact_holm=judgement.p_exact_holm,
        normality_carries=judgement.normality_carries(alpha),
    )
