"""The blocked-model section: each swept key's grid analysed with seed blocks, accuracy ~ norm x
setting + seed block (fitted per norm, and on each norm's paired differences with the
baseline): each value against the reference value, the norm x setting interactions, and trend
slopes per doubling."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def _change_rows(
    series: Mapping[str, Series], blocks: Mapping[str, str], ref: str, base: str
) -> list[list[str]]:
    """Per (norm, value): the change from the reference value's table, and the interaction
    (that change minus the baseline's, from the paired differences). ``blocks`` maps each
    value's text to its table."""
    keys = [(n, v) for n in series for v in blocks if v != ref and blocks[v] in series[n]]
    own = [change_contrast(series[n], blocks[v], blocks[ref]) for n, v in keys]
    inter = [
        change_contrast(paired_differences(series[n], series[base]), blocks[v], blocks[ref])
        if n != base
        else None
        for n, v in keys
    ]
    p_own, p_inter = _holm_texts(own), _holm_texts(inter)
    return [
        [code(n), code(v), _effect(own[i]), p_own[i], _effect(inter[i]), p_inter[i]]
        for i, (n, v) in enumerate(keys)
    ]


def _trend_rows(
    series: Mapping[str, Series], covariate: Mapping[str, float], base: str
) -> list[list[str]]:
    """Per norm: its slope per doubling with seed blocks, and its slope minus the baseline's
    (the trend of its paired differences with the baseline)."""
    norms = list(series)
    slopes = [slope_contrast(series[n], covariate) for n in norms]
    diffs = [
        slope_contrast(paired_differences(series[n], series[base]), covariate)
        if n != base
        else None
        for n in norms
    ]
    p_slopes, p_diffs = _holm_texts(slopes), _holm_texts(diffs)
    return [
        [code(n), _effect(slopes[i]), p_slopes[i], _effect(diffs[i]), p_diffs[i]]
        for i, n in enumerate(norms)
    ]


def _sweep_lines(
    key: str,
    context: str,
    values: Sequence[tuple[object, Setting]],
    full: Mapping[str, Series],
    baseline: str,
    grid_listing: Mapping,
) -> list[str]:
    """The blocked models' tables for one swept key; ``full`` holds every table of the
    backbone, so each norm's model spans the whole grid."""
    ref = grid_value_text(reference_value(key, values, grid_listing)[0])
    blocks = {grid_value_text(v): setting.block for v, setting in values}
    title = f"### {code(key)} on {code(context)}, against {code(ref)} and `{baseline}`"
    if baseline not in full:
        return [title, "", f"No `{baseline}` run: no interaction is tested.", ""]
    series = {n: full[n] for n in sorted(full, key=lambda n: (n != baseline, n))}
    headers = ["norm", "value", f"Δ vs {ref} (pp, 95% CI)", "p (Holm)"]
    headers += [f"interaction: Δ − `{baseline}`'s (pp, 95% CI)", "p (Holm)"]
    lines = [title, "", table(_change_rows(series, blocks, ref, baseline), headers), ""]
    covariate = log2_covariate(values)
    # With two values the line is the change above, so it is shown from three values on.
    if covariate is not None and len(set(covariate.values())) >= 3:
        along = {n: {v: s[b] for v, b in blocks.items() if b in s} for n, s in series.items()}
        headers = ["norm", "slope (pp per doubling, 95% CI)", "p (Holm)"]
        headers += [f"slope − `{baseline}`'s (pp per doubling, 95% CI)", "p (Holm)"]
        lines += [
            f"Trend along `{key}` (a line in log2 of the value with seed blocks):",
            "",
            table(_trend_rows(along, covariate, baseline), headers),
            "",
        ]
    return lines


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
    settings = settings_of(split_simulated(collected.ok_runs())[int(simulated)])
    by_backbone: dict[str, list[Setting]] = {}
    for setting in settings:
        by_backbone.setdefault(setting.backbone, []).append(setting)
    full = {b: itt_series(collected, group, protocol) for b, group in by_backbone.items()}
    lines: list[str] = []
    for (key, context), values in sweeps_of(settings).items():
        if len(values) >= 2:
            series = full[values[0][1].backbone]
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
