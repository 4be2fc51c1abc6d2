"""Build the leaderboard: read a run directory once, collect once, render every section, and
write ``leaderboard.md`` with its figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import atomic
from bench.results import figures
from bench.results.figure_context import figure_context
from bench.results.leaderboard import blocked, privacy_utility, sections, sweeps
from bench.results.leaderboard.across import across_sections
from bench.results.leaderboard.backbone import (
    CONFIDENCE,
    backbone_section,
    itt_analyses,
)
from bench.results.leaderboard.collect import (
    Collected,
    block_of,
    collect,
    is_simulated,
    is_tuning,
    measurements,
    planned_cells,
    split_simulated,
)
from bench.results.leaderboard.header import header_lines, suite_name
from bench.results.leaderboard.methods import methods_section
from bench.results.leaderboard.order import numeric_key
from bench.results.leaderboard.protocol import PRIMARY, Protocol, resolve_protocol
from bench.results.leaderboard.records_table import records_section
from bench.results.leaderboard.settings import (
    LEADERBOARD_FILE,
    RECORDS_FILE,
    SUITE_FILE,
    load_suite,
    resolve_alpha,
    resolve_baseline,
    suite_section,
)
from bench.results.leaderboard.simulated import simulated_section
from bench.results.leaderboard.summary import summary_lines
from bench.results.leaderboard.survivorship import cell_outcomes, per_protocol_analyses
from bench.results.leaderboard.testset import testset_lines
from bench.results.record import Record
from bench.results.records import read_every_record, read_records, superseded_path
from bench.results.stats import BackboneAnalysis, mean_ci


def render_leaderboard(
    records: Sequence[Record] | Collected,
    problems: Sequence[str],
    suite: Mapping,
    *,
    run_dir: Path,
    baseline: str,
    alpha: float,
    replaced: Sequence[Record] = (),
) -> str:
    """The leaderboard's Markdown, from records already read.

    Deterministic: the output depends only on the arguments, everything is sorted, and no clock
    is read.

    Args:
        records: Records as returned by :func:`bench.results.records.read_records` (numeric
            fields finite numbers or None), or already collected by
            :func:`~bench.results.leaderboard.collect.collect` (as `write_report` does, to draw
            the figures from the same collection).
        problems: Messages about unusable lines of the records file.
        suite: The resolved suite (``suite.json``), or an empty dict.
        run_dir: The run directory (its name is the fallback suite name).
        baseline: The baseline norm's spec string.
        alpha: Family-wise significance level.
        replaced: The records a re-run replaced (``records.superseded.jsonl``), listed under
            the failed runs.

    Returns:
        The Markdown text, ending with a newline.
    """
    collected = records if isinstance(records, Collected) else collect(records)
    records = collected.records
    protocol = resolve_protocol(suite, records)
    body, analyses = _backbone_tables(collected, suite, baseline, alpha, protocol, run_dir=run_dir)
    body += across_sections(analyses, collected, protocol)
    body += sections.tuning_section(collected.tuning, suite, records)
    body += sections.privacy_section(records)
    body += _grouping_sections(collected, suite, baseline, alpha, protocol)
    body += sections.figures_section(any(a.results for a in analyses.values()))
    simulated_body, simulated_analyses = _simulated_section(
        collected, suite, baseline, alpha, protocol
    )
    body += simulated_body
    analyses.update(simulated_analyses)
    body += sections.failed_section(collected.not_ok, replaced, records)
    body += sections.stacks_section(records)
    planned_all = planned_cells(suite)
    if planned_all:
        body += sections.missing_section(planned_all, {r["run_key"] for r in records})
    all_problems = [*problems, *collected.problems]
    body += sections.problems_section(all_problems)
    body += methods_section(alpha, list(analyses.values()))
    body += records_section(records)
    summary = summary_lines(suite_name(suite, records, run_dir), collected, analyses, protocol)
    header = header_lines(suite, records, len(all_problems), run_dir, baseline, alpha, summary)
    return "\n".join(header + body).rstrip("\n") + "\n"


def _grouping_sections(
    collected: Collected,
    suite: Mapping,
    baseline: str,
    alpha: float,
    protocol: Protocol,
    simulated: bool = False,
) -> list[str]:
    """The sections that read across tables (effect of each swept value, the blocked model,
    privacy-utility), over DP tables only or TAN simulations' tables only; the rankings across
    tables and the rank agreement are `across_sections`."""
    ok = split_simulated(collected.ok_runs())[int(simulated)]
    grid = suite_section(suite, "grid")
    figure = figures.figure_name(figures.PRIVACY_UTILITY_PNG, simulated)
    return [
        *sweeps.value_effect_section(ok, grid, alpha),
        *blocked.blocked_section(collected, protocol, baseline, grid, simulated),
        *privacy_utility.privacy_utility_section(ok, alpha, figure),
    ]


def _simulated_section(
    collected: Collected, suite: Mapping, baseline: str, alpha: float, protocol: Protocol
) -> tuple[list[str], dict[str, BackboneAnalysis]]:
    """Everything about TAN simulations (``dp_valid: false``), under one "TAN simulation, not
    DP" heading and apart from every DP section: their tables, ranks, sweeps and figures."""
    tables, analyses = _backbone_tables(collected, suite, baseline, alpha, protocol, True)
    if not analyses:
        return [], {}
    inner = tables + across_sections(analyses, collected, protocol)
    inner += _grouping_sections(collected, suite, baseline, alpha, protocol, True)
    inner += sections.figures_section(any(a.results for a in analyses.values()), True)
    return simulated_section(inner), analyses


def _backbone_tables(
    collected: Collected,
    suite: Mapping,
    baseline: str,
    alpha: float,
    protocol: Protocol,
    simulated: bool = False,
    run_dir: Path | None = None,
) -> tuple[list[str], dict[str, BackboneAnalysis]]:
    """Every DP table's section (``simulated``: every TAN simulation's), over the tables with
    records or planned cells, with their statistics; the primary tables' test-set uncertainty
    when ``run_dir`` (where the predictions files are) is given."""
    planned_norms: dict[str, set[str]] = {}
    for c in planned_cells(suite):
        if is_tuning(c):
            continue
        if isinstance(c.get("backbone"), str) and isinstance(c.get("norm"), str):
            planned_norms.setdefault(block_of(c), set()).add(c["norm"])
    body: list[str] = []
    analyses: dict[str, BackboneAnalysis] = {}
    # Every table's statistics at once: the primary tables share one Holm family.
    analysed = itt_analyses(collected.cells, baseline, alpha, protocol)
    sensitivity = per_protocol_analyses(collected.cells, analysed, baseline, alpha)
    # The primary grid point's tables first, then the others in numeric order of their grid
    # values (steps=40 before steps=120, ε 0.5 before 8).
    blocks = sorted(
        (set(collected.cells) | set(planned_norms)),
        key=lambda b: (protocol.family_of(collected.cells.get(b, {})) != PRIMARY, numeric_key(b)),
    )
    for backbone in blocks:
        if is_simulated(backbone) != simulated:
            continue
        lines, analyses[backbone] = backbone_section(
            backbone,
            collected.cells.get(backbone, {}),
            planned_norms.get(backbone, ()),
            baseline,
            alpha,
            protocol,
            analysed.get(backbone),
            sensitivity.get(backbone),
        )
        body += lines
        norms = collected.cells.get(backbone, {})
        if run_dir is not None and protocol.family_of(norms) == PRIMARY:
            body += testset_lines(norms, analyses[backbone], run_dir, protocol.collapse)
    if not analyses and not simulated:
        only_tan = any(is_simulated(b) for b in collected.cells)
        body += [
            "No DP run: every run is a TAN simulation (below)." if only_tan else "No records yet.",
            "",
        ]
    return body, analyses


def figure_points(
    collected: Collected, collapse: float, simulated: bool = False
) -> list[figures.FigurePoint]:
    """One figure point per DP table (``simulated``: TAN simulation's table) and norm, sorted by
    table then norm: the mean and interval under intention to treat (a failed or collapsed run
    at chance), as the tables above score them, and the ok runs' throughput."""
    points = []
    for backbone in sorted(b for b in collected.cells if is_simulated(b) == simulated):
        cells = collected.cells[backbone]
        for norm, outcomes in sorted(cell_outcomes(cells, collapse).items()):
            if not outcomes.scores:
                continue
            acc = mean_ci(list(outcomes.scores.values()), CONFIDENCE)
            points.append(
                figures.FigurePoint(
                    backbone=backbone,
                    norm=norm,
                    acc_pct=100 * acc.mean,
                    acc_half_width_pct=None if acc.half_width is None else 100 * acc.half_width,
                    throughput_img_s=measurements(cells[norm])["throughput"],
                )
            )
    return points


def write_report(run_dir: Path, *, baseline: str | None = None, alpha: float | None = None) -> Path:
    """Write ``leaderboard.md`` and its figures into a run directory.

    Reads ``run_dir/records.jsonl`` and, when present, ``run_dir/suite.json`` (the resolved
    suite the runner writes: its name, description, data, privacy target, report settings and
    the full grid of cells, used to list cells that have no record yet). Bad lines of the
    records file are listed in the report, not raised. Same records give a byte-identical
    Markdown file.

    Args:
        run_dir: Directory holding ``records.jsonl`` (``reports/<suite>``).
        baseline: Baseline norm spec, matched to a norm of the records (a default spelled out
            matches the norm without it); default: the suite's ``report.baseline``, else
            ``group_norm``.
        alpha: Family-wise significance level; default: the suite's ``report.alpha``, else 0.05.

    Returns:
        The path of the leaderboard.

    Raises:
        RecordsError: When the records file is missing or unreadable, or suite.json is not
            valid JSON.
        ConfigError: When alpha is not in (0, 0.5), ``baseline`` names no norm of the
            records, or the suite's ``report`` protocol is invalid (see
            :func:`~bench.results.leaderboard.protocol.resolve_protocol`).
    """
    run_dir = Path(run_dir)
    text, collected, collapse = _leaderboard(run_dir, baseline, alpha)
    dp_ok, simulated_ok = split_simulated(collected.ok_runs())
    context = figure_context(collected.records)
    points = figure_points(collected, collapse)
    if points:
        figures.write_figures(run_dir, points, context=context)
    curve = privacy_utility.curve_points(dp_ok)
    if curve:
        figures.write_privacy_utility(run_dir, curve, context=context)
    # TAN simulations' own figures (`figures.figure_name`), never drawn beside DP runs.
    context = figure_context(collected.records, simulated=True)
    points = figure_points(collected, collapse, simulated=True)
    if points:
        figures.write_figures(run_dir, points, context=context, simulated=True)
    curve = privacy_utility.curve_points(simulated_ok)
    if curve:
        figures.write_privacy_utility(run_dir, curve, context=context, simulated=True)
    path = run_dir / LEADERBOARD_FILE
    atomic.write_text(path, text)
    return path


def leaderboard_text(
    run_dir: Path, *, baseline: str | None = None, alpha: float | None = None
) -> str:
    """The Markdown `write_report` would write for ``run_dir``, without writing it or figures."""
    return _leaderboard(Path(run_dir), baseline, alpha)[0]


def _leaderboard(
    run_dir: Path, baseline: str | None, alpha: float | None
) -> tuple[str, Collected, float]:
    """The leaderboard's text, the records collected for it (which the figures reuse) and the
    protocol's collapse threshold (with which the figures score runs as the tables do)."""
    records_path = run_dir / RECORDS_FILE
    read = read_records(records_path)
    suite = load_suite(run_dir / SUITE_FILE)
    resolved_alpha = resolve_alpha(alpha, suite)
    resolved_baseline = resolve_baseline(baseline, suite, read.records)
    # The leaderboard sits beside the records file, so the file's own name is the useful
    # reference (and an absolute path would make the report depend on where it was built).
    prefix = f"{records_path}:"
    problems = [
        RECORDS_FILE + ":" + p[len(prefix) :] if p.startswith(prefix) else p for p in read.problems
    ]
    collected = collect(read.records)
    replaced_path = superseded_path(records_path)
    text = render_leaderboard(
        collected,
        problems,
        suite,
        run_dir=run_dir,
        baseline=resolved_baseline,
        alpha=resolved_alpha,
        replaced=read_every_record(replaced_path) if replaced_path.exists() else (),
    )
    return text, collected, resolve_protocol(suite, collected.records).collapse
