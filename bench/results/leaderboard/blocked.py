"""The blocked-model section: each swept key's grid analysed with seed blocks, accuracy ~ norm x
setting + seed block (fitted per norm, and on each norm's paired differences with the
baseline): each value against the reference value, the norm x setting interactions, and trend
slopes per doubling."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.results.leaderboard.collect import Collected, split_simulated
from bench.results.leaderboard.markdown import NA, code, interval_text, pvalue_text, table
from bench.results.leaderboard.protocol import Protocol
from bench.results.leaderboard.survivorship import cell_outcomes
from bench.results.leaderboard.sweeps import Setting, reference_value, settings_of, sweeps_of
from bench.results.record import grid_value_text
from bench.results.stats import holm
from bench.results.stats.blocked import (
    Contrast,
    Series,
    paired_differences,
    setting_model,
    trend_model,
)


def itt_series(
    collected: Collected, settings: Sequence[Setting], protocol: Protocol
) -> dict[str, dict[str, Mapping]]:
    """Norm -> table -> ITT accuracy per seed, over the given tables."""
    series: dict[str, dict[str, Mapping]] = {}
    for setting in settings:
        outcomes = cell_outcomes(collected.cells.get(setting.block, {}), protocol.collapse)
        for norm, o in outcomes.items():
            if o.scores:
                series.setdefault(norm, {})[setting.block] = o.scores
    return series


def log2_covariate(values: Sequence[tuple[object, Setting]]) -> dict[str, float] | None:
    """log2 of each value when every value is a positive number (a slope per doubling)."""
    out = {}
    for value, _ in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            return None
        out[grid_value_text(value)] = math.log2(value)
    return out


def _holm_texts(contrasts: Sequence[Contrast | None]) -> list[str]:
    """Each contrast's Holm-corrected p over the tested ones, as table cells."""
    adjusted = holm([None if c is None else c.pvalue for c in contrasts])
    return [NA if p is None else pvalue_text(p) for p in adjusted]


def _effect(c: Contrast | None) -> str:
    return NA if c is None else interval_text(c.estimate, c.half_width)


def change_contrast(series: Series, value: str, ref: str) -> Contrast | None:
    """The change from ``ref`` to ``value`` in a setting model with seed blocks."""
    if value == ref or value not in series or ref not in series:
        return None
    return setting_model(series).contrast({value: 1.0, ref: -1.0})


def slope_contrast(series: Series, covariate: Mapping[str, float]) -> Contrast | None:
    """The slope per unit of the covariate in a trend model with seed blocks."""
    usable = {v: seeds for v, seeds in series.items() if seeds}
    if len(usable) < 2:
        return None
    return trend_model(usable, covariate).contrast({"slope": 1.0})


@dataclass(frozen=True)
class SweepTests:
    """One swept key's blocked-model tests, in the order its tables show them (the baseline's
    rows first, then the other norms by name); the leaderboard and the findings page both read
    them from here.

    Attributes:
        ref: The reference value, as text.
        changes: Per (norm, value other than ``ref``): the norm, the value, the change from
            ``ref`` and the interaction (that change minus the baseline's; None for the
            baseline itself).
        trends: Per norm: the norm, its slope per doubling and its slope minus the baseline's
            (None for the baseline); None unless the key has 3 or more positive numeric values.
    """

    ref: str
    changes: tuple[tuple[str, str, Contrast | None, Contrast | None], ...]
    trends: tuple[tuple[str, Contrast | None, Contrast | None], ...] | None


def sweep_tests(
    key: str,
    values: Sequence[tuple[object, Setting]],
    full: Mapping[str, Series],
    baseline: str,
    grid_listing: Mapping,
) -> SweepTests | None:
    """The blocked models' tests of one swept key; ``full`` holds every table of the backbone,
    so each norm's model spans the whole grid. None without a baseline run."""
    if baseline not in full:
        return None
    ref = grid_value_text(reference_value(key, values, grid_listing)[0])
    blocks = {grid_value_text(v): setting.block for v, setting in values}
    series = {n: full[n] for n in sorted(full, key=lambda n: (n != baseline, n))}
    base = series[baseline]
    changes = tuple(
        (
            n,
            v,
            change_contrast(series[n], blocks[v], blocks[ref]),
            change_contrast(paired_differences(series[n], base), blocks[v], blocks[ref])
            if n != baseline
            else None,
        )
        for n in series
        for v in blocks
        if v != ref and blocks[v] in series[n]
    )
    covariate = log2_covariate(values)
    # With two values the line is the change above, so it is tested from three values on.
    if covariate is None or len(set(covariate.values())) < 3:
        return SweepTests(ref, changes, None)
    along = {n: {v: s[b] for v, b in blocks.items() if b in s} for n, s in series.items()}
    trends = tuple(
        (
            n,
            slope_contrast(along[n], covariate),
            slope_contrast(paired_differences(along[n], along[baseline]), covariate)
            if n != baseline
            else None,
        )
        for n in along
    )
    return SweepTests(ref, changes, trends)


def _sweep_lines(
    key: str,
    context: str,
    values: Sequence[tuple[object, Setting]],
    full: Mapping[str, Series],
    baseline: str,
    grid_listing: Mapping,
) -> list[str]:
    """The blocked models' tables for one swept key (:func:`sweep_tests`)."""
    ref = grid_value_text(reference_value(key, values, grid_listing)[0])
    title = f"### {code(key)} on {code(context)}, against {code(ref)} and `{baseline}`"
    tests = sweep_tests(key, values, full, baseline, grid_listing)
    if tests is None:
        return [title, "", f"No `{baseline}` run: no interaction is tested.", ""]
    p_own = _holm_texts([own for _, _, own, _ in tests.changes])
    p_inter = _holm_texts([inter for _, _, _, inter in tests.changes])
    rows = [
        [code(n), code(v), _effect(own), p_own[i], _effect(inter), p_inter[i]]
        for i, (n, v, own, inter) in enumerate(tests.changes)
    ]
    headers = ["norm", "value", f"Δ vs {ref} (pp, 95% CI)", "p (Holm)"]
    headers += [f"interaction: Δ − `{baseline}`'s (pp, 95% CI)", "p (Holm)"]
    lines = [title, "", table(rows, headers), ""]
    if tests.trends is not None:
        p_slopes = _holm_texts([slope for _, slope, _ in tests.trends])
        p_diffs = _holm_texts([diff for _, _, diff in tests.trends])
        rows = [
            [code(n), _effect(slope), p_slopes[i], _effect(diff), p_diffs[i]]
            for i, (n, slope, diff) in enumerate(tests.trends)
        ]
        headers = ["norm", "slope (pp per doubling, 95% CI)", "p (Holm)"]
        headers += [f"slope − `{baseline}`'s (pp per doubling, 95% CI)", "p (Holm)"]
        lines += [
            f"Trend along `{key}` (a line in log2 of the value with seed blocks):",
            "",
            table(rows, headers),
            "",
        ]
    return lines


def swept_keys(
    collected: Collected, protocol: Protocol, simulated: bool
) -> list[tuple[str, str, Sequence[tuple[object, Setting]], dict[str, Series]]]:
    """Every key swept over two or more values in the DP tables (``simulated``: the TAN
    simulations'), with what is held fixed, its values and its backbone's ITT series."""
    settings = settings_of(split_simulated(collected.ok_runs())[int(simulated)])
    by_backbone: dict[str, list[Setting]] = {}
    for setting in settings:
        by_backbone.setdefault(setting.backbone, []).append(setting)
    full = {b: itt_series(collected, group, protocol) for b, group in by_backbone.items()}
    return [
        (key, context, values, full[values[0][1].backbone])
        for (key, context), values in sweeps_of(settings).items()
        if len(values) >= 2
    ]


def blocked_section(
    collected: Collected,
    protocol: Protocol,
    baseline: str,
    grid: Mapping | None = None,
    simulated: bool = False,
) -> list[str]:
    """Every swept key's grid as one blocked linear model (see the module docstring).

    Args:
        collected: The report's records, collected once.
        protocol: The suite's declared protocol (collapse threshold for the ITT scores).
        baseline: The baseline norm's spec string.
        grid: The suite's grid (``suite.json``), for the reference value; may be empty.
        simulated: Model the TAN simulations' tables instead of the DP ones (never both).

    Returns:
        The section's lines; empty when no key was swept over two or more values.
    """
    lines: list[str] = []
    for key, context, values, series in swept_keys(collected, protocol, simulated):
        lines += _sweep_lines(key, context, values, series, baseline, grid or {})
    if not lines:
        return []
    return [
        "## Swept keys as one blocked model",
        "",
        "A backbone's tables (every value of every swept key) analysed as one model with seed "
        "blocks, by least squares: for each norm, accuracy (intention to treat: failed and "
        "collapsed runs at chance) ~ one mean per table + one effect per seed; for each norm "
        "against the baseline, the same model of their per-seed differences. A seed fixes the "
        "data order and noise streams of every cell it ran, so its offset is removed rather "
        "than left in the error, and the error is estimated over the whole grid: a per-value "
        "paired test with 2 seeds has 1 df, this model (tables − 1) × (seeds − 1). Each "
        "norm keeps its own error variance (spreads differ several-fold between norms). "
        "Columns: each value against the reference value (the grid's first listed, as in the "
        "table above); the interaction, that change minus the baseline's (does the norm gain "
        "more or less from the value than the baseline?), which a sentence comparing two "
        "norms' gains needs. For a numeric key with 3 or more values, the trend: a line in "
        "log2 of the value (the slope is accuracy per doubling) and the slope of the "
        "differences with the baseline (the interaction as a trend). Norms against the "
        "baseline at one value are the per-table paired tests above, where pairing by seed is "
        "the seed block. Each column is its own exploratory family, Holm-corrected over its "
        "rows, and the models assume normal errors of one variance per norm.",
        "",
        *lines,
    ]
