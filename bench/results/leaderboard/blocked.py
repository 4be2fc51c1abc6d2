"""The blocked-model section: each swept key's grid analysed as one model, accuracy ~ norm x
setting + seed block, with contrasts against the baseline and the reference value, the
norm x setting interactions, and per-norm trend slopes with seed blocks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.results.leaderboard.collect import Collected
from bench.results.leaderboard.markdown import NA, code, interval_text, pvalue_text, table
from bench.results.leaderboard.protocol import Protocol
from bench.results.leaderboard.survivorship import cell_outcomes
from bench.results.leaderboard.sweeps import Setting, reference_value, settings_of, sweeps_of
from bench.results.record import grid_value_text
from bench.results.stats import holm
from bench.results.stats.blocked import Contrast, Fit, Grid, cell_model, trend_model

#: Title of the section, and the family label every p-value in it carries.
EXPLORATORY_NOTE = "exploratory (Holm within the column's family)"


def _grid(
    collected: Collected, values: Sequence[tuple[object, Setting]], protocol: Protocol
) -> Grid:
    """ITT accuracy per seed of every (norm, value text) cell of one sweep."""
    grid: dict = {}
    for value, setting in values:
        outcomes = cell_outcomes(collected.cells.get(setting.block, {}), protocol.collapse)
        for norm, o in outcomes.items():
            if o.scores:
                grid[(norm, grid_value_text(value))] = o.scores
    return grid


def _covariate(values: Sequence[tuple[object, Setting]]) -> dict[str, float] | None:
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


def _cell_rows(fit: Fit, norms: list[str], shown: list[str], ref: str, base: str) -> list[list]:
    """Per (norm, value): vs the baseline at that value, vs the norm's reference value, and
    the interaction (that change minus the baseline's)."""
    keys = [(n, v) for n in norms for v in shown]
    vs_base = [fit.contrast({(n, v): 1.0, (base, v): -1.0}) if n != base else None for n, v in keys]
    vs_ref = [fit.contrast({(n, v): 1.0, (n, ref): -1.0}) if v != ref else None for n, v in keys]
    inter = [
        fit.contrast({(n, v): 1.0, (n, ref): -1.0, (base, v): -1.0, (base, ref): 1.0})
        if n != base and v != ref
        else None
        for n, v in keys
    ]
    columns = [_holm_texts(c) for c in (vs_base, vs_ref, inter)]
    tests = (vs_base, vs_ref, inter)
    rows = []
    for i, (n, v) in enumerate(keys):
        cells = [(_effect(t[i]), p[i]) for t, p in zip(tests, columns, strict=True)]
        rows.append([code(n), code(v), *[text for pair in cells for text in pair]])
    return rows


def _trend_rows(fit: Fit, norms: list[str], base: str) -> list[list[str]]:
    """Per norm: its slope per doubling with seed blocks, and its slope minus the baseline's."""
    slopes = [fit.contrast({(n, "slope"): 1.0}) for n in norms]
    diffs = [
        fit.contrast({(n, "slope"): 1.0, (base, "slope"): -1.0}) if n != base else None
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
    collected: Collected,
    protocol: Protocol,
    baseline: str,
    grid_listing: Mapping,
) -> list[str]:
    """The blocked model's tables for one swept key."""
    grid = _grid(collected, values, protocol)
    ref = grid_value_text(reference_value(key, values, grid_listing)[0])
    shown = [grid_value_text(v) for v, _ in values]
    norms = sorted({n for n, _ in grid}, key=lambda n: (n != baseline, n))
    if baseline not in norms:
        return [f"### {code(key)} on {code(context)}", "", f"No `{baseline}` run: no model.", ""]
    fit = cell_model(grid)
    lines = [
        f"### {code(key)} on {code(context)}, against {code(ref)} and `{baseline}`",
        "",
        f"Cell model: {len(grid)} cells, {fit.df} residual df after seed blocks.",
        "",
    ]
    if fit.df < 1:
        return [*lines, "Not fitted: no residual degrees of freedom.", ""]
    headers = ["norm", "value", "Δ vs baseline (pp, 95% CI)", "p (Holm)"]
    headers += [f"Δ vs {ref} (pp, 95% CI)", "p (Holm)", "interaction (pp, 95% CI)", "p (Holm)"]
    lines += [table(_cell_rows(fit, norms, shown, ref, baseline), headers), ""]
    covariate = _covariate(values)
    # With two values the line is the cell model's change, so it is shown from three on.
    if covariate is not None and len(set(covariate.values())) >= 3:
        trend = trend_model(grid, covariate)
        if trend.df >= 1:
            headers = ["norm", "slope (pp per doubling, 95% CI)", "p (Holm)"]
            headers += [f"slope − `{baseline}`'s (pp per doubling)", "p (Holm)"]
            lines += [
                f"Trend model (a line in log2 `{key}` per norm, seed blocks; "
                f"{trend.df} residual df):",
                "",
                table(_trend_rows(trend, norms, baseline), headers),
                "",
            ]
    return lines


def blocked_section(
    collected: Collected, protocol: Protocol, baseline: str, grid: Mapping | None = None
) -> list[str]:
    """Every swept key's grid as one blocked linear model (see the module docstring).

    Args:
        collected: The report's records, collected once.
        protocol: The suite's declared protocol (collapse threshold for the ITT scores).
        baseline: The baseline norm's spec string.
        grid: The suite's grid (``suite.json``), for the reference value; may be empty.

    Returns:
        The section's lines; empty when no key was swept over two or more values.
    """
    lines: list[str] = []
    for (key, context), values in sweeps_of(settings_of(collected.ok_runs())).items():
        if len(values) >= 2:
            lines += _sweep_lines(key, context, values, collected, protocol, baseline, grid or {})
    if not lines:
        return []
    return [
        "## Swept keys as one blocked model",
        "",
        "Each swept key's tables analysed together by least squares: accuracy (intention to "
        "treat, failed and collapsed runs at chance) ~ one mean per (norm, value) cell + one "
        "effect per seed (seed blocks: a seed's data order and noise streams are shared by "
        "every cell it ran, so its offset is removed rather than left in the error, and the "
        "error variance is pooled over the whole grid). Contrasts are t-tests on the model's "
        "residual df. Columns: each norm against the baseline at each value; against its own "
        "reference value (the grid's first listed, as below); and the interaction, that change "
        "minus the baseline's (does this norm gain more or less from the value than the "
        "baseline?), which is what a sentence comparing two norms' gains needs. For a numeric "
        "key, the trend model fits one line in log2 of the value per norm with the same seed "
        "blocks: the slope is accuracy per doubling, and its difference from the baseline's is "
        "the norm x setting interaction as a trend. Each column is its own family, Holm-"
        f"corrected over its rows; all are {EXPLORATORY_NOTE.split(' (')[0]} unless the suite "
        "declares them primary.",
        "",
        *lines,
    ]
