"""The leaderboard's test families as claims: each member's effect, interval, test and Holm p."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.results.leaderboard.backbone import itt_analyses, itt_analysis
from bench.results.leaderboard.collect import Collected, OkRuns
from bench.results.leaderboard.markdown import code, pp_text, pvalue_text
from bench.results.leaderboard.order import numeric_key
from bench.results.leaderboard.privacy_utility import curve_trends, epsilon_curves
from bench.results.leaderboard.protocol import PRIMARY, Protocol
from bench.results.leaderboard.survivorship import per_protocol, per_protocol_analyses
from bench.results.leaderboard.sweeps import settings_of, sweeps_of, value_effects
from bench.results.record import grid_value_text
from bench.results.stats import (
    BETTER,
    NO_DIFFERENCE,
    PAIRED,
    WORSE,
    BackboneAnalysis,
    Comparison,
    Judged,
    NormResult,
    judge_family,
)

#: What the scores of a family are: every attempted run, or the ok runs alone.
ITT = "intention to treat"
OK_ONLY = "ok runs only"


@dataclass(frozen=True)
class Member:
    """One test of a family, as a finding needs it.

    Attributes:
        subject: What is tested, as Markdown (a norm, a norm at a value).
        direction: +1 or -1 for a significant effect, 0 for none, None when not tested.
        claims: The two phrases of a significant effect, (positive, negative), each completing
            the subject (``is more accurate than `group_norm```).
        estimate: The effect (a fraction, or a fraction per doubling); None when unknown.
        half_width: Half-width of its unadjusted 95% interval; None without one.
        test: The test that gave the p-value, with its replication (``paired t-test, 5 seeds``).
        p_holm: Its Holm-corrected p-value within the family; None when not tested.
        detectable: The smallest effect its test finds with 80% power at Holm's first
            threshold; None when not tested.
        notes: Further statements about the same test (the exact test, equivalence,
            the per-protocol verdict), each a clause.
    """

    subject: str
    direction: int | None
    claims: tuple[str, str]
    estimate: float | None
    half_width: float | None
    test: str
    p_holm: float | None
    detectable: float | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """Tests Holm-corrected together, as one leaderboard table or column shows them.

    Attributes:
        name: The family's name, as Markdown (says the table or column it is).
        primary: Whether it is the suite's primary family (its claims are the suite's).
        basis: What the scores are (:data:`ITT` or :data:`OK_ONLY`).
        unit: The unit of the effects (``pp`` or ``pp per doubling``).
        members: The tests, in the leaderboard's order.
        power: The table's pooled power line as a clause, or None.
        power_of: Whose power line ``power`` is, as the findings name it (a joint primary
            family gives each of its tables').
    """

    name: str
    primary: bool
    basis: str
    unit: str
    members: tuple[Member, ...]
    power: str | None = None
    power_of: str = "the table's power line"

    @property
    def m(self) -> int:
        """The family's size: its tested members, the m of Holm's correction."""
        return sum(member.p_holm is not None for member in self.members)


def p_is(p: float) -> str:
    """``p = 0.0123`` or ``p < 0.0001``, the leaderboard's rounding in a sentence."""
    text = pvalue_text(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def direction_of(verdict: str) -> int | None:
    """+1, -1 or 0 for a judged verdict; None when it was not tested."""
    return {BETTER: 1, WORSE: -1, NO_DIFFERENCE: 0}.get(verdict)


def comparison_text(comparison: Comparison) -> str:
    """A comparison's test with its replication: ``paired t-test, 5 seeds``."""
    if comparison.test == PAIRED:
        return f"{PAIRED}, {comparison.n} seeds"
    return f"{comparison.test or 'no test'}, at least {comparison.n} seeds a side"


def _judged_member(subject: str, j: Judged, claims: tuple[str, str]) -> Member:
    """A member from a judged comparison (with its test) or slope (least squares over runs)."""
    test = j.test
    if isinstance(test, Comparison):
        estimate, text = test.diff, comparison_text(test)
    else:
        estimate, text = test.slope, f"least-squares slope, {test.n} runs"
    verdict = direction_of(j.verdict)
    return Member(subject, verdict, claims, estimate, test.half_width, text, j.p_holm, j.detectable)


def table_family(
    block: str,
    norms: Mapping,
    baseline: str,
    alpha: float,
    protocol: Protocol,
    analysed: tuple[Mapping, BackboneAnalysis] | None = None,
    judged: BackboneAnalysis | None = None,
) -> Family | None:
    """One leaderboard table's comparisons with the baseline under intention to treat, as
    :func:`~bench.results.leaderboard.backbone.backbone_section` computes them (``analysed``:
    its `itt_analyses` entry; default: the table judged alone); None when no comparison was
    tested. In a joint primary family (several tables) each subject names its table.
    ``judged``: its per-protocol sensitivity judged in the same family (`per_protocol_analyses`
    entry); default: judged alone."""
    outcomes, analysis = analysed or itt_analysis(norms, baseline, alpha, protocol)
    if not any(r.p_holm is not None for r in analysis.results):
        return None
    sensitivity = judged or per_protocol(norms, outcomes, baseline, alpha)
    left_out = {r.norm: r for r in sensitivity.results} if sensitivity else {}
    claims = (f"is more accurate than {code(baseline)}", f"is less accurate than {code(baseline)}")
    where = f" on {code(block)}" if len(analysis.family) > 1 else ""
    members = tuple(
        _norm_member(r, claims, alpha, protocol.rope, left_out.get(r.norm), where)
        for r in analysis.results
        if r.vs_baseline is not None
    )
    power = analysis.power
    power_text = None
    if power is not None:
        power_text = (
            "no difference an accuracy can have would be found with 80% power"
            if power.detectable > 1.0
            else f"differences below {pp_text(power.detectable)} pp could not be seen with "
            f"{power.power:.0%} power (pooled SD of the paired differences, {power.n} seeds)"
        )
    primary = protocol.family_of(norms) == PRIMARY
    name = f"{code(block)}, every norm against {code(baseline)}"
    return Family(name, primary, ITT, "pp", members, power_text)


def _norm_member(
    r: NormResult,
    claims: tuple[str, str],
    alpha: float,
    rope: float,
    per_protocol: NormResult | None,
    where: str = "",
) -> Member:
    """A norm's comparison with the baseline, with what the table says beside its verdict."""
    comparison = r.vs_baseline
    notes = []
    if r.normality_carries and r.p_exact_holm is not None:
        notes.append(
            f"the exact sign-flip test does not reach α (Holm {p_is(r.p_exact_holm)}),"
            " so the verdict rests on the t-test's normality"
        )
    if r.verdict == NO_DIFFERENCE and r.evidence is not None:
        e = r.evidence
        shown = "equivalent" if e.equivalent(alpha) else "not shown equivalent"
        notes.append(
            f"{shown} within ±{pp_text(rope)} pp by TOST ({p_is(e.tost_p)}; posterior "
            f"P(within) = {e.inside:.2f})"
        )
    if (
        per_protocol is not None
        and per_protocol.verdict != r.verdict
        and per_protocol.p_holm is not None
    ):
        notes.append(
            f"with failed runs left out (per-protocol sensitivity, not a claim) it reads "
            f"{per_protocol.verdict} (Holm {p_is(per_protocol.p_holm)})"
        )
    assert comparison is not None  # the caller passes compared norms only
    return Member(
        code(r.norm) + where,
        direction_of(r.verdict),
        claims,
        comparison.diff,
        comparison.half_width,
        comparison_text(comparison),
        r.p_holm,
        r.detectable,
        tuple(notes),
    )


def value_effect_families(ok: OkRuns, grid: Mapping, alpha: float) -> list[Family]:
    """The "Effect of each swept value" tables: each norm at each value against the key's
    reference value, paired over seeds, one exploratory family per table (ok runs only)."""
    families = []
    for (key, context), values in sweeps_of(settings_of(ok)).items():
        effects = value_effects(ok, key, values, grid, alpha) if len(values) >= 2 else None
        if effects is None:
            continue
        ref_text = code(grid_value_text(effects.reference))
        members = tuple(
            _judged_member(
                f"{code(norm)} at {code(key)} = {code(grid_value_text(value))}",
                j,
                (f"is more accurate than at {ref_text}", f"is less accurate than at {ref_text}"),
            )
            for (norm, value, _), j in zip(effects.found, effects.judged, strict=True)
        )
        name = f"effect of {code(key)} on {code(context)}, each value against {ref_text}"
        families.append(Family(name, False, OK_ONLY, "pp", members))
    return families


def privacy_utility_families(ok: OkRuns, alpha: float) -> list[Family]:
    """The privacy-utility slopes: each norm's least-squares line of accuracy against log2 ε,
    one exploratory family per panel (ok runs only, no seed blocks)."""
    families = []
    for curve in epsilon_curves(ok):
        fits = curve_trends(curve)
        judged = judge_family([fit for _, fit in fits], alpha)
        members = tuple(
            _judged_member(code(n), j, ("rises with ε", "falls with ε"))
            for (n, _), j in zip(fits, judged, strict=True)
        )
        name = f"privacy–utility slopes on {code(curve.panel)} (no seed blocks)"
        families.append(Family(name, False, OK_ONLY, "pp per doubling of ε", members))
    return families


def table_families(
    collected: Collected, baseline: str, alpha: float, protocol: Protocol
) -> list[Family]:
    """Every table's comparisons with the baseline that tested something, in the leaderboard's
    order of tables (numeric order of their grid values: steps=40 before steps=120)."""
    analysed = itt_analyses(collected.cells, baseline, alpha, protocol)
    sensitivity = per_protocol_analyses(collected.cells, analysed, baseline, alpha)
    ordered = sorted(collected.cells.items(), key=lambda item: numeric_key(item[0]))
    found = [
        (
            block,
            table_family(
                block, norms, baseline, alpha, protocol, analysed[block], sensitivity[block]
            ),
        )
        for block, norms in ordered
    ]
    families = [family for _, family in found if family is not None]
    joint = [(b, f) for b, f in found if f is not None and len(analysed[b][1].family) > 1]
    if not joint:
        return families
    # The primary tables were Holm-corrected together: one family, in the first one's place.
    tables = ", ".join(code(b) for b, _ in joint)
    merged = Family(
        f"every norm against {code(baseline)} on the primary tables {tables}",
        True,
        ITT,
        "pp",
        tuple(m for _, f in joint for m in f.members),
        "; ".join(f"{code(b)}: {f.power}" for b, f in joint if f.power) or None,
        "the primary tables' power lines",
    )
    first = families.index(joint[0][1])
    rest = [f for f in families if all(f is not g for _, g in joint)]
    return [*rest[:first], merged, *rest[first:]]


def sorted_families(families: Sequence[Family]) -> list[Family]:
    """Primary families first, the others in the order given: the page's order."""
    return sorted(families, key=lambda f: not f.primary)
