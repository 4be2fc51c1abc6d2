"""The leaderboard's opening summary: what ran, the primary result with its interval, what the
data cannot tell apart, and what it cost, from the same analyses as the tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.results.leaderboard.collect import Collected, is_simulated, is_tuning, seed_key
from bench.results.leaderboard.markdown import (
    accuracy_text,
    difference_text,
    distinct,
    join,
    p_with_test_text,
)
from bench.results.leaderboard.order import numeric_sorted
from bench.results.leaderboard.protocol import FIXED_KEYS, PRIMARY, Protocol
from bench.results.record import Record, grid_value_text
from bench.results.stats import NO_DIFFERENCE, BackboneAnalysis, NormResult
from bench.results.stats.significance import BETTER, WORSE


def summary_lines(
    name: str,
    collected: Collected,
    analyses: Mapping[str, BackboneAnalysis],
    protocol: Protocol,
) -> list[str]:
    """Five bullets that come first in the report, right under its title.

    Args:
        name: The suite's name.
        collected: Every record, collected once.
        analyses: Each table's statistics, by table name (`collect.block_of`).
        protocol: The declared protocol (which tables are at the primary grid point).

    Returns:
        Markdown lines: the bullets and a blank line.
    """
    primary = [
        (block, analyses[block])
        for block in numeric_sorted(analyses)
        if not is_simulated(block) and protocol.family_of(collected.cells.get(block, {})) == PRIMARY
    ]
    return [
        f"- **What ran:** {_ran_text(name, collected.records, protocol)}",
        f"- **Primary result** ({_point_text(protocol)}): {_primary_text(primary)}",
        f"- **Not told apart:** {_apart_text(primary)}",
        f"- **Cost:** {_cost_text(collected.records)}",
        "- **Reading order:** the primary table first, then the other tables in numeric order of "
        "their grid values and the sections across them; the statistics are stated under "
        "*Methods* and every run key is listed under *Records*, at the end.",
        "",
    ]


def _point_text(protocol: Protocol) -> str:
    if not protocol.primary:
        return "the one grid point, primary family"
    return f"at {protocol.point_text()}, primary family"


def _ran_text(name: str, records: Sequence[Record], protocol: Protocol) -> str:
    """Suite, data, backbones, norms, seeds, swept values and the records' statuses."""
    if not records:
        return f"suite `{name}`: no records yet."
    finals = [r for r in records if not is_tuning(r)]
    datasets = join(distinct(r.get("dataset") for r in records), "data not recorded")
    backbones = join([f"`{b}`" for b in distinct(r.get("backbone") for r in finals)], "none")
    norms = distinct(r.get("norm") for r in finals)
    seeds = sorted({r.get("seed") for r in finals if r.get("seed") is not None}, key=seed_key)
    swept: dict[str, set[str]] = {}
    for r in finals:
        overrides = r.get("overrides") if isinstance(r.get("overrides"), Mapping) else {}
        for key, value in overrides.items():
            if key not in FIXED_KEYS:
                swept.setdefault(key, set()).add(grid_value_text(value))
    grid = " × ".join(
        f"{key} ∈ {{{', '.join(numeric_sorted(values))}}}" for key, values in sorted(swept.items())
    )
    grid = f" at {grid}" if grid else ""
    statuses = [str(r.get("status")) for r in records]
    order = {s: i for i, s in enumerate(("ok", "failed", "skipped", "interrupted"))}
    shown = sorted(set(statuses), key=lambda s: (order.get(s, len(order)), s))
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in shown)
    tuning = len(records) - len(finals)
    return (
        f"suite `{name}` on {datasets}, backbone {backbones}; {len(norms)} norms × "
        f"{len(seeds)} seeds ({_seeds_text(seeds)}){grid}; {len(records)} records ({counts})"
        + (f", {tuning} of them tuning runs" if tuning else "")
        + "."
    )


def _seeds_text(seeds: Sequence[object]) -> str:
    """``0–4`` for consecutive integers, else the seeds listed."""
    ints = [s for s in seeds if isinstance(s, int) and not isinstance(s, bool)]
    if len(ints) == len(seeds) > 2 and ints == list(range(ints[0], ints[-1] + 1)):
        return f"{ints[0]}–{ints[-1]}"
    return join([str(s) for s in seeds], "none")


def _primary_text(primary: Sequence[tuple[str, BackboneAnalysis]]) -> str:
    """The norm with the highest mean accuracy in each primary table, against the baseline."""
    if not primary:
        return "no DP table at the primary grid point has a run yet."
    many = len(primary) > 1
    parts = [(f"on `{block}`, " if many else "") + _best_text(a) for block, a in primary]
    return "; ".join(parts) + "."


def _best_text(analysis: BackboneAnalysis) -> str:
    """One table's norm with the highest mean accuracy (a description of the sample: no test
    compares it with every other norm), its Δ with the baseline, the test and the verdict."""
    if not analysis.results:
        return "no ok run"
    best = analysis.results[0]
    baseline = next((r for r in analysis.results if r.norm == analysis.baseline), None)
    head = f"`{best.norm}` has the highest mean accuracy, {_accuracy(best)}"
    if baseline is None:
        return head + f"; the baseline `{analysis.baseline}` has no ok run, so nothing is tested"
    if best is baseline:
        return head + " (it is the baseline): " + _others_text(analysis)
    comparison = best.vs_baseline
    test = p_with_test_text(best.p_holm, comparison.test if comparison else None)
    m = analysis.family_m or sum(r.p_holm is not None for r in analysis.results)
    caveat = (
        "; the exact sign-flip test does not confirm it (normality carries the verdict)"
        if best.normality_carries
        else ""
    )
    return (
        f"{head}, against the baseline `{analysis.baseline}`'s "
        f"{_accuracy(baseline)}: Δ = {difference_text(comparison)} pp, Holm p = "
        f"{test} over {m} comparison{'s' if m != 1 else ''}: **{best.verdict}**{caveat}"
    )


def _accuracy(result: NormResult) -> str:
    """``48.73 ± 1.68 % (n=5)``: the table's accuracy cell with its unit before the count."""
    text = accuracy_text(result.accuracy)
    number, _, count = text.partition(" (")
    return f"{number} % ({count}"


def _others_text(analysis: BackboneAnalysis) -> str:
    better = _named(analysis.results, BETTER)
    return (
        "no norm is significantly better" if better == "none" else f"significantly better: {better}"
    )


def _named(results: Sequence[NormResult], verdict: str) -> str:
    return join([f"`{r.norm}`" for r in results if r.verdict == verdict], "none")


def _apart_text(primary: Sequence[tuple[str, BackboneAnalysis]]) -> str:
    """The norms with no significant difference from the baseline at the primary point, and
    the difference the design could have seen."""
    if not primary:
        return "nothing tested yet."
    parts = []
    for block, analysis in primary:
        prefix = f"on `{block}`, " if len(primary) > 1 else ""
        same = _named(analysis.results, NO_DIFFERENCE)
        power = analysis.power
        if power is None:
            seen = "no pooled power estimate (no paired comparison)"
        elif power.detectable > 1.0:
            seen = f"{power.n} seeds could not see any difference with {power.power:.0%} power"
        else:
            seen = (
                f"{power.n} seeds see {100 * power.detectable:.2f} pp with {power.power:.0%} "
                "power, so smaller differences could not be seen"
            )
        parts.append(
            f"{prefix}no significant difference from `{analysis.baseline}`: {same} ({seen}); "
            f"better: {_named(analysis.results, BETTER)}; worse: {_named(analysis.results, WORSE)}"
        )
    return "; ".join(parts) + "."


def _cost_text(records: Sequence[Record]) -> str:
    """The records' total wall time (tuning runs apart) and the devices they ran on."""
    walls = [r.get("wall_s") for r in records]
    known = [float(w) for w in walls if isinstance(w, (int, float)) and math.isfinite(w)]
    tuning = [
        float(r["wall_s"])
        for r in records
        if is_tuning(r) and isinstance(r.get("wall_s"), (int, float))
    ]
    devices = join(distinct(r.get("device") for r in records), "a device not recorded")
    if not known:
        return f"no wall time recorded; device: {devices}."
    text = f"{_duration(math.fsum(known))} of wall time over {len(known)} runs"
    if tuning:
        text += f" ({_duration(math.fsum(tuning))} of it tuning)"
    if len(known) < len(records):
        text += f"; {len(records) - len(known)} records have no wall time"
    return f"{text}, on {devices}."


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"
