"""The per-backbone tables (accuracy, comparisons with the baseline, letters, cost); the
ranking across backbones is in :mod:`bench.results.leaderboard.across`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bench.results.leaderboard.collect import Cell, measurements
from bench.results.leaderboard.columns import MEMORY_HEADER, RATIO_HEADER, drop_empty, dropped_note
from bench.results.leaderboard.evidence_table import evidence_lines
from bench.results.leaderboard.graded import failures_text
from bench.results.leaderboard.markdown import (
    NA,
    accuracy_text,
    code,
    detectable_text,
    difference_text,
    epsilon_text,
    number_text,
    optional_text,
    p_with_test_text,
    table,
)
from bench.results.leaderboard.order import numeric_key
from bench.results.leaderboard.protocol import PRIMARY, Protocol
from bench.results.leaderboard.survivorship import cell_outcomes, family_lines, sensitivity_lines
from bench.results.stats import (
    MAX_SEEDS,
    BackboneAnalysis,
    NormResult,
    analyse_backbone,
    judge_jointly,
)
from bench.results.stats.itt import Outcomes

CONFIDENCE = 0.95


def backbone_section(
    backbone: str,
    norms: Mapping[str, Cell],
    planned_norms: Iterable[str],
    baseline: str,
    alpha: float,
    protocol: Protocol | None = None,
    analysed: tuple[dict[str, Outcomes], BackboneAnalysis] | None = None,
    sensitivity: BackboneAnalysis | None = None,
) -> tuple[list[str], BackboneAnalysis]:
    """The Markdown lines of one backbone's table, and the statistics behind it.

    The table is the intention-to-treat analysis (every attempted run, a failed or collapsed
    one at chance); the per-protocol analysis of the ok runs follows it as a sensitivity table
    when the two differ. ``analysed``: the table's `itt_analyses` entry (its comparisons judged
    in the suite's family); default: the table judged alone (`itt_analysis`). ``sensitivity``:
    its per-protocol analysis, judged in the same family (`per_protocol_analyses`).
    """
    protocol = protocol or Protocol({})
    outcomes, analysis = analysed or itt_analysis(norms, baseline, alpha, protocol)
    lines = [f"## Backbone `{backbone}`", ""]
    if not analysis.has_baseline:
        lines += [
            f"The baseline `{baseline}` has no ok run on this backbone, so no norm is compared "
            "with it here (verdicts say so); the letters do not depend on it.",
            "",
        ]
    headers = [
        "letters",
        "norm",
        "accuracy % (ITT, 95% CI)",
        "Δ vs baseline (pp, 95% CI)",
        "p (Holm)",
        "verdict",
        "detectable Δ (pp)",
        "throughput (img/s)",
        RATIO_HEADER,
        MEMORY_HEADER,
        "ε spent (max)",
        "failures (95% CI)",
    ]
    rows = [
        _result_row(result, norms[result.norm], outcomes[result.norm])
        for result in analysis.results
    ]
    ranked = {result.norm for result in analysis.results}
    for norm in sorted((set(norms) | set(planned_norms)) - ranked):
        rows.append([NA, code(norm), _no_ok_text(norms.get(norm)), *[NA] * (len(headers) - 3)])
    # The statistics' columns stay (a "—" there says what was not tested); only the
    # measurements' columns go when no run measured them.
    headers, rows, dropped = drop_empty(headers, rows, keep=7)
    lines += [table(rows, headers), ""]
    lines += dropped_note(dropped, (r for c in norms.values() for r in c.ok.values()))
    lines += family_lines(analysis, protocol, protocol.family_of(norms), backbone)
    lines += [_power_text(analysis), ""]
    lines += evidence_lines(analysis, alpha, protocol.rope)
    if any(r.accuracy.n == 1 for r in analysis.results):
        lines += [
            "Cells with one seed (n=1) have no interval, are not tested and not ranked (—).",
            "",
        ]
    lines += sensitivity_lines(norms, outcomes, baseline, alpha, protocol.collapse, sensitivity)
    return lines, analysis


def itt_analysis(
    norms: Mapping[str, Cell], baseline: str, alpha: float, protocol: Protocol
) -> tuple[dict[str, Outcomes], BackboneAnalysis]:
    """A table's runs under intention to treat (a failed or collapsed run at chance) and the
    statistics of its comparisons with the baseline, as its table and the findings read them."""
    outcomes = cell_outcomes(norms, protocol.collapse)
    accuracy = {norm: o.scores for norm, o in outcomes.items() if o.scores}
    return outcomes, analyse_backbone(accuracy, baseline, alpha, CONFIDENCE, protocol.rope)


def itt_analyses(
    tables: Mapping[str, Mapping[str, Cell]], baseline: str, alpha: float, protocol: Protocol
) -> dict[str, tuple[dict[str, Outcomes], BackboneAnalysis]]:
    """Every table's `itt_analysis`, the primary tables' comparisons with the baseline judged
    as one Holm family when there are several (a table per backbone at the primary grid
    point: `bench.results.stats.judge_jointly`), as the leaderboard and the findings read them.
    """
    out = {block: itt_analysis(norms, baseline, alpha, protocol) for block, norms in tables.items()}
    primary = [
        block
        for block in sorted(out, key=numeric_key)
        if protocol.family_of(tables[block]) == PRIMARY
        and any(r.p_holm is not None for r in out[block][1].results)
    ]
    if len(primary) > 1:
        joint = judge_jointly({block: out[block][1] for block in primary})
        out.update({block: (out[block][0], joint[block]) for block in primary})
    return out


def _result_row(result: NormResult, cell: Cell, outcome: Outcomes) -> list[str]:
    """A ranked norm's row: accuracy, failures, its comparison with the baseline, letters and
    cost."""
    measured = measurements(cell)
    comparison = result.vs_baseline
    memory = measured["memory"]
    return [
        result.letters or NA,
        code(result.norm),
        accuracy_text(result.accuracy),
        difference_text(comparison),
        p_with_test_text(result.p_holm, comparison.test if comparison else None),
        result.verdict,
        detectable_text(result.detectable),
        optional_text(measured["throughput"], ".1f"),
        optional_text(measured["ratio"], ".2f"),
        optional_text(None if memory is None else memory / 2**20, ".0f"),
        epsilon_text(measured["epsilon"], measured["epsilon_target_exceeded"]),
        failures_text(outcome.rate),
    ]


def _no_ok_text(cell: Cell | None) -> str:
    """What the accuracy column says for a norm with no usable ok run."""
    counts = [] if cell is None else [(cell.failed, "failed"), (cell.skipped, "skipped")]
    counts += [] if cell is None else [(cell.interrupted, "interrupted")]
    counts += [] if cell is None else [(cell.invalid, "ok without a valid test_acc")]
    said = ", ".join(f"{n} {label}" for n, label in counts if n)
    return f"no ok run ({said or 'no record yet'})"


def _power_text(analysis: BackboneAnalysis) -> str:
    """The backbone's power line: the smallest difference its verdicts could see, and the seeds
    that 1 pp would need."""
    power = analysis.power
    if power is None:
        if any(r.detectable is not None for r in analysis.results):
            return (
                "**Power:** no paired comparison with the baseline, so no pooled estimate; each "
                "row's detectable Δ comes from its own (Welch) test."
            )
        return "**Power:** not estimated: no comparison with the baseline was tested."
    seeds = (
        f"more than {MAX_SEEDS}" if power.seeds_for_one_pp is None else str(power.seeds_for_one_pp)
    )
    head = (
        f"**Power** (paired t-test, two-sided, at α/m = {number_text(analysis.alpha)}/{power.m} "
        f"= {power.level:.4g}: Holm's first step, so a lower bound on the verdicts' power): with "
        f"the pooled SD of the paired differences with the baseline, {100 * power.sd:.2f} pp "
        f"(estimated on {power.sd_df} df; the test itself has {power.n - 1} df), "
    )
    if power.detectable > 1.0:
        seen = (
            f"{power.n} seeds would find a difference with {power.power:.0%} power only above "
            f"100 pp, so **no difference an accuracy can have would be found with "
            f"{power.power:.0%} power** and 'no significant difference' rules out nothing."
        )
    else:
        detectable = f"{100 * power.detectable:.2f} pp"
        seen = (
            f"{power.n} seeds find a difference of {detectable} with {power.power:.0%} power, so "
            f"**differences below {detectable} could not be seen** and 'no significant "
            "difference' does not rule them out."
        )
    return head + seen + f" Seeing 1 pp with {power.power:.0%} power would need {seeds} seeds."
