"""Failures under a backbone's table: each cell's runs under intention to treat, the collapsed
runs, the family its p-values belong to, and the per-protocol (ok runs only) sensitivity table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bench.results.leaderboard.collect import Cell
from bench.results.leaderboard.markdown import (
    NA,
    accuracy_text,
    code,
    difference_text,
    join,
    number_text,
    p_with_test_text,
    pp_text,
    table,
)
from bench.results.leaderboard.protocol import PRIMARY, Protocol
from bench.results.record import Record
from bench.results.stats import BackboneAnalysis, analyse_backbone, judge_jointly
from bench.results.stats.itt import DEFAULT_COLLAPSE, Outcomes, intention_to_treat


def chance_of(records: Iterable[Record]) -> float | None:
    """Chance accuracy, 1 / classes, of the data these records ran on: from a record's
    ``num_classes``, else from its config (synthetic data or CIFAR-10); None when unknown."""
    records = list(records)
    for record in records:
        classes = record.get("num_classes")
        if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2:
            return 1 / classes
    for record in records:
        config = record.get("config")
        data = config.get("data") if isinstance(config, Mapping) else None
        if not isinstance(data, Mapping):
            continue
        if data.get("source") == "cifar10":
            return 0.1
        classes = data.get("num_classes")
        if data.get("source") == "synthetic" and isinstance(classes, int) and classes >= 2:
            return 1 / classes
    return None


def cell_outcomes(
    norms: Mapping[str, Cell], collapse: float = DEFAULT_COLLAPSE
) -> dict[str, Outcomes]:
    """Each norm's runs of one table under intention to treat, at the table's chance."""
    chance = chance_of(r for c in norms.values() for r in (*c.ok.values(), *c.failed_records))
    return {
        norm: intention_to_treat(
            cell.accuracy, [r.get("seed") for r in cell.failed_records], chance, collapse
        )
        for norm, cell in norms.items()
    }


def family_lines(
    analysis: BackboneAnalysis, protocol: Protocol, family: str, block: str = ""
) -> list[str]:
    """Which family the table's p-values belong to (the table ``block``'s), and how to read
    it."""
    m = sum(r.p_holm is not None for r in analysis.results)
    if not m:
        return []
    ranked = sum(r.letters not in (None, "") for r in analysis.results)
    members = (
        f"the {m} comparison(s) with `{analysis.baseline}` in this table, Holm-corrected "
        "together (t-test and sign-flip p each over the same family)"
    )
    if len(analysis.family) > 1:
        others = join([code(t) for t in analysis.family if t != block])
        members = (
            f"the {analysis.family_m} comparisons with `{analysis.baseline}` in the "
            f"{len(analysis.family)} tables at the primary grid point (this table's {m} and "
            f"those of {others}), Holm-corrected together (t-test and sign-flip p each over the "
            "same family), so that the suite's primary claims hold at α together, not each "
            "table's on its own"
        )
    if family == PRIMARY and not protocol.primary:
        head = (
            f"**Family: primary** — {members}; the grid sweeps no key beyond backbone, norm and "
            "seed, so this is its primary grid point. The suite's claims rest on these verdicts."
        )
    elif family == PRIMARY:
        how = (
            "declared by `report.primary`"
            if protocol.declared
            else "the default: the last value the grid lists of each swept key"
        )
        head = (
            f"**Family: primary** — {members}, at the primary grid point "
            f"({protocol.point_text()}; {how}). The suite's claims rest on these verdicts."
        )
    else:
        head = (
            f"**Family: exploratory** — {members}. This table is not at the primary grid point "
            f"({protocol.point_text()}): its verdicts suggest, they do not establish."
        )
    letters = (
        f" Letters: exploratory, Holm over the {ranked * (ranked - 1) // 2} pairs of the "
        f"{ranked} ranked norms."
        if ranked >= 2
        else ""
    )
    return [head + letters, ""]


def _collapsed_text(outcomes: Mapping[str, Outcomes], collapse: float) -> list[str]:
    """The runs flagged collapsed, or nothing."""
    flagged = [(n, o) for n, o in sorted(outcomes.items()) if o.collapsed]
    if not flagged:
        return []
    chance = next(o.chance for _, o in flagged)
    runs = "; ".join(
        f"`{norm}` seed {', '.join(str(s) for s in o.collapsed)}" for norm, o in flagged
    )
    return [
        f"**Collapsed** (status ok, but test accuracy within {pp_text(collapse)} pp of chance, "
        f"{pp_text(chance)} %; counted as failures, at chance): {runs}.",
        "",
    ]


def per_protocol(
    norms: Mapping[str, Cell], outcomes: Mapping[str, Outcomes], baseline: str, alpha: float
) -> BackboneAnalysis | None:
    """The per-protocol sensitivity analysis of a table (ok runs at their own accuracy, failed
    runs left out, Holm over its own comparisons); None when no run failed or collapsed, or
    when chance is unknown (then the intention-to-treat table already left the failures out)."""
    if not any(o.failed or o.collapsed for o in outcomes.values()):
        return None
    if next((o.chance for o in outcomes.values()), None) is None:
        return None
    return _ok_runs_analysis(norms, baseline, alpha)


def _ok_runs_analysis(norms: Mapping[str, Cell], baseline: str, alpha: float) -> BackboneAnalysis:
    """A table's ok runs at their own accuracy, its comparisons Holm-corrected alone."""
    return analyse_backbone({n: c.accuracy for n, c in norms.items() if c.ok}, baseline, alpha)


def per_protocol_analyses(
    tables: Mapping[str, Mapping[str, Cell]],
    analysed: Mapping[str, tuple[Mapping[str, Outcomes], BackboneAnalysis]],
    baseline: str,
    alpha: float,
) -> dict[str, BackboneAnalysis | None]:
    """Every table's `per_protocol` sensitivity analysis; the tables of a joint primary family
    (``analysed``: `bench.results.leaderboard.backbone.itt_analyses`) judged in one family as
    their intention-to-treat comparisons were, each joint table with its ok runs (the same
    comparisons as its table when none failed). Judged alone, a sensitivity verdict could
    differ from its table's for the family's size, not for the failures left out."""
    out = {
        block: per_protocol(norms, analysed[block][0], baseline, alpha)
        for block, norms in tables.items()
    }
    joint = next((a.family for _, a in analysed.values() if len(a.family) > 1), ())
    if any(out[block] is not None for block in joint):
        judged = judge_jointly(
            {block: _ok_runs_analysis(tables[block], baseline, alpha) for block in joint}
        )
        out.update({block: judged[block] for block in joint if out[block] is not None})
    return out


def sensitivity_lines(
    norms: Mapping[str, Cell],
    outcomes: Mapping[str, Outcomes],
    baseline: str,
    alpha: float,
    collapse: float = DEFAULT_COLLAPSE,
    judged: BackboneAnalysis | None = None,
) -> list[str]:
    """The collapsed runs, and the per-protocol analysis (ok runs at their own accuracy, failed
    runs left out) as a sensitivity table when any run failed or collapsed (``judged``: its
    `per_protocol_analyses` entry; default: judged alone)."""
    if not any(o.failed or o.collapsed for o in outcomes.values()):
        return []
    lines = _collapsed_text(outcomes, collapse)
    analysis = judged or per_protocol(norms, outcomes, baseline, alpha)
    if analysis is None:
        lines += [
            "Chance accuracy is unknown (no record names the classes), so failed runs could not "
            "be scored: the table above leaves them out, as the per-protocol analysis does.",
            "",
        ]
        return lines
    rows = [
        [
            code(r.norm),
            f"{len(norms[r.norm].ok)} / {len(norms[r.norm].ok) + outcomes[r.norm].failed}",
            accuracy_text(r.accuracy),
            difference_text(r.vs_baseline),
            p_with_test_text(r.p_holm, r.vs_baseline.test if r.vs_baseline else None),
            r.verdict,
        ]
        for r in analysis.results
    ]
    headers = ["norm", "ok / attempted", "accuracy % (ok runs)", "Δ vs baseline (pp, 95% CI)"]
    over = (
        f"the {analysis.family_m} comparisons of the joint primary family, each primary "
        "table's ok runs"
        if len(analysis.family) > 1
        else "this table's own comparisons"
    )
    return [
        *lines,
        f"Per-protocol sensitivity (ok runs only, each at its own accuracy, collapsed ones "
        f"included; failed runs left out; Holm at α = {number_text(alpha)} over {over}): "
        "where a verdict here differs from the table above, it depends on leaving the "
        "failures out.",
        "",
        table(rows, [*headers, "p (Holm)", "verdict"]) if rows else NA,
        "",
    ]
