"""The leaderboard's header: title, provenance (suite, data, privacy target, hardware, versions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.results.leaderboard import with_tuning
from bench.results.leaderboard.markdown import distinct, join, number_text
from bench.results.leaderboard.randomness import randomness_lines
from bench.results.leaderboard.settings import RECORDS_FILE, suite_section
from bench.results.record import Record
from bench.results.stacks import STACK_KEYS, stacks

#: Provenance keys shown in the header, in this order: the stack's, then the interpreter's.
VERSION_KEYS = (*STACK_KEYS, "python")


def header_lines(
    suite: Mapping,
    records: Sequence[Record],
    n_problems: int,
    run_dir: Path,
    baseline: str,
    alpha: float,
    summary: Sequence[str] = (),
) -> list[str]:
    """Title, the summary (``summary``: its lines, right under the title) and provenance; the
    statement of the statistics is the Methods section at the end (`methods.methods_section`)."""
    name = suite_name(suite, records, run_dir)
    data = suite_section(suite, "data")
    datasets = distinct(r.get("dataset") for r in records) or distinct([data.get("dataset")])
    provenance = [r["provenance"] for r in records if isinstance(r.get("provenance"), Mapping)]
    versions = []
    for key in VERSION_KEYS:
        found = distinct(p.get(key) for p in provenance)
        if found:
            versions.append(f"{key} {' / '.join(found)}")
    statuses = [r["status"] for r in records]
    shown = ("ok", "failed", "skipped", *(["interrupted"] if "interrupted" in statuses else []))
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in shown)
    lines = [
        f"# Leaderboard: {name}",
        "",
        *summary,
        f"Generated from `{RECORDS_FILE}` by `python -m bench report`; do not edit by hand.",
        "",
        f"- **Suite:** {name}" + (f" — {suite['description']}" if suite.get("description") else ""),
        f"- **Dataset:** {join(datasets)}",
        f"- **Privacy target:** "
        f"{_privacy_text(suite_section(suite, 'privacy'), records, suite_section(suite, 'grid'))}",
        *_tan_lines(records),
        *randomness_lines(records),
        *with_tuning.header_lines(records, suite),
        f"- **Hardware:** {join(distinct(r.get('device') for r in records))}"
        + _hosts_text(provenance),
        f"- **Versions:** {join(versions)}" + _mixed_note(records),
        f"- **Commit:** {join(distinct(p.get('git_commit') for p in provenance))}",
        f"- **Records:** {len(records)} ({counts})"
        + (f"; {n_problems} problem(s) listed below" if n_problems else ""),
        f"- **Baseline:** `{baseline}`; **α** = {number_text(alpha)}",
        "",
    ]
    return lines


def suite_name(suite: Mapping, records: Sequence[Record], run_dir: Path) -> str:
    """The suite's name: suite.json's, else the records', else the run directory's."""
    return suite.get("name") or join(distinct(r.get("suite") for r in records), run_dir.name)


def _tan_lines(records: Sequence[Record]) -> list[str]:
    """The header's warning when any run is a TAN simulation."""
    simulated = [r for r in records if r.get("dp_valid") is False]
    if not simulated:
        return []
    targets = distinct(
        f"(ε = {s['epsilon']}, δ = {s['delta']}) at batch {s['batch_size']}, run at batch "
        f"{s['simulated_batch_size']}"
        for s in (r.get("simulated") for r in simulated)
        if isinstance(s, Mapping)
    )
    return [
        f"- **TAN simulation** of {join(targets, 'the target')}: predicts accuracy, gives no "
        "privacy. Its runs keep the steps and scale the noise by b/B (σ = σ_ref · b / B, "
        "Sander et al. 2023); their ε spent is what they really spent, far above the target, "
        "and their tables are marked *TAN simulation, not DP*, apart from any DP run."
    ]


def _privacy_text(privacy: Mapping, records: Sequence[Record], grid: Mapping | None = None) -> str:
    """The privacy target: the grid's values of a key it sweeps (``privacy.epsilon``), else the
    suite's, else the distinct values the records hold.

    A swept key must not print the suite's single default: an epsilon sweep's header would name
    one budget when its tables are at four.
    """
    grid = grid or {}

    def values(suite_key: str, record_key: str) -> tuple[list[str], bool]:
        swept = grid.get(f"privacy.{suite_key}")
        if isinstance(swept, Sequence) and not isinstance(swept, str) and swept:
            return _numeric_order(distinct(swept)), True
        if privacy.get(suite_key) is not None:
            return distinct([privacy[suite_key]]), False
        return _numeric_order(distinct(r.get(record_key) for r in records)), False

    def compact(text: str) -> str:
        try:
            return number_text(float(text))
        except ValueError:
            return text

    def shown(found: tuple[list[str], bool]) -> str:
        texts, swept = found
        texts = list(dict.fromkeys(compact(t) for t in texts))  # 8 and 8.0 are one budget
        text = join(texts, "?")
        return f"{text} (swept by the grid)" if swept and len(texts) > 1 else text

    epsilons, deltas = values("epsilon", "epsilon_target"), values("delta", "delta")
    if not epsilons[0] and not deltas[0]:
        return "not recorded"
    text = f"(ε = {shown(epsilons)}, δ = {shown(deltas)})"
    accountants, _ = values("accountant", "accountant")
    return text + (f", accountant {join(accountants)}" if accountants else "")


def _numeric_order(texts: list[str]) -> list[str]:
    """Numbers in numeric order (``2`` before ``16``); anything else keeps its sorted order."""
    try:
        return sorted(texts, key=float)
    except ValueError:
        return texts


def _hosts_text(provenance: Sequence[Mapping]) -> str:
    """The records' platforms (OS and kernel build) with their counts, when recorded.

    Records made before ``provenance.platform`` existed say nothing, and add nothing here. Two
    platforms mean two machines (or one machine updated between parts), on which the same cell
    need not give the same accuracy (floating point differs, and DP-SGD amplifies it), which
    the header says; one platform does not prove one machine (two hosts built alike read the
    same)."""
    counts = Counter(p.get("platform") for p in provenance)
    if set(counts) <= {None}:
        return ""
    parts = [
        ("platform not recorded" if platform is None else f"`{platform}`")
        + f" ({n} record{'s' if n != 1 else ''})"
        for platform, n in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]
    platforms = len(set(counts) - {None})
    note = (
        f"; **{platforms} platforms**: one cell's accuracy can differ between machines by about "
        "a seed's spread, so compare within a platform where it matters"
        if platforms > 1
        else ""
    )
    return f", on {', '.join(parts)}{note}"


def _mixed_note(records: Sequence[Record]) -> str:
    n = len(stacks(records))
    return f" (**{n} software stacks**: see below)" if n > 1 else ""
