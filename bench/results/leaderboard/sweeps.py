"""Leaderboard sections for swept grid keys: the effect of each value (and the sweeps the rank
agreement of :mod:`bench.results.leaderboard.agreement` reads).

A grid that sweeps a key beyond backbone, norm and seed (``training.steps``, ``privacy.epsilon``)
gives each value its own leaderboard table (``resnet9 [training.steps=400]``). The sections here
read across those tables: how much each value moves each norm's accuracy against the key's
first value (does pruning cost GroupNorm accuracy? does epsilon 8 beat epsilon 1?). Accuracy
against epsilon, when the key is ``privacy.epsilon``, is in
:mod:`bench.results.leaderboard.privacy_utility`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.results.leaderboard.collect import TAN_MARK, OkRuns, is_simulated
from bench.results.leaderboard.markdown import (
    NA,
    accuracy_text,
    code,
    detectable_text,
    difference_text,
    pvalue_text,
    table,
)
from bench.results.record import Record, grid_value_text
from bench.results.stats import (
    BETTER,
    PAIRED,
    WORSE,
    Judged,
    compare_family,
    mean_ci,
)
from bench.results.stats.descriptive import Seeds


@dataclass(frozen=True)
class Setting:
    """One leaderboard table: a backbone at one value of each swept key."""

    block: str
    backbone: str
    overrides: Mapping[str, object]
    simulated: bool = False  # a TAN simulation's table: never in one sweep with DP tables

    def context(self, key: str) -> str:
        """The table's name without ``key``: what is held fixed while ``key`` varies (a TAN
        simulation's says so, so DP and simulated tables never share a sweep)."""
        others = [
            f"{k}={grid_value_text(v)}" for k, v in sorted(self.overrides.items()) if k != key
        ]
        name = f"{self.backbone} [{', '.join(others)}]" if others else self.backbone
        return name + (TAN_MARK if self.simulated else "")


def settings_of(ok: OkRuns) -> list[Setting]:
    """The tables that swept at least one key, read from their records."""
    settings = []
    for block, norms in sorted(ok.items()):
        record = next((r for runs in norms.values() for r in runs.values()), None)
        if record is None:
            continue
        overrides = record.get("overrides")
        if isinstance(overrides, Mapping) and overrides and isinstance(record["backbone"], str):
            simulated = is_simulated(block)
            settings.append(Setting(block, record["backbone"], dict(overrides), simulated))
    return settings


def value_key(value: object) -> tuple:
    """Numbers in numeric order, then anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, grid_value_text(value))


def sweeps_of(settings: Sequence[Setting]) -> dict[tuple[str, str], list[tuple[object, Setting]]]:
    """For each (swept key, what is held fixed): the settings at each value, in value order."""
    found: dict[tuple[str, str], dict[str, tuple[object, Setting]]] = {}
    for setting in settings:
        for key, value in setting.overrides.items():
            found.setdefault((key, setting.context(key)), {})[grid_value_text(value)] = (
                value,
                setting,
            )
    return {
        group: sorted(values.values(), key=lambda item: value_key(item[0]))
        for group, values in sorted(found.items())
    }


def accuracy_of(runs: Mapping[str, Mapping[object, Record]]) -> dict[str, dict[object, float]]:
    return {
        norm: {seed: float(r["test_acc"]) for seed, r in seeds.items()}
        for norm, seeds in runs.items()
    }


def reference_value(
    key: str, values: Sequence[tuple[object, Setting]], grid: Mapping
) -> tuple[object, Setting]:
    """The value every other is compared with: the grid's first listed value of ``key`` when it
    ran (the suite's author lists the off or default setting first: ``null`` for pruning, the
    smallest budget), else the first in value order."""
    listed = grid.get(key)
    if isinstance(listed, Sequence) and not isinstance(listed, str):
        for candidate in listed:
            for value, setting in values:
                if grid_value_text(value) == grid_value_text(candidate):
                    return value, setting
    return values[0]


#: Verdict words of the effect of a swept value: "better" would read as a norm beating another.
_HIGHER, _LOWER = "higher", "lower"
_EFFECT_WORDS = {BETTER: _HIGHER, WORSE: _LOWER}


def value_effect_section(ok: OkRuns, grid: Mapping | None = None, alpha: float = 0.05) -> list[str]:
    """How much each value of a swept key moves each norm's accuracy, against the first value.

    For each swept key and what is held fixed (a backbone and the other swept keys' values),
    every norm's accuracy at each other value is compared with its accuracy at the reference
    value (the grid's first listed one that ran, else the first in value order) by
    :func:`~bench.results.stats.compare_family`: a paired t-test over the seeds both ran. The
    p-values are Holm-corrected over the table's comparisons, and the detectable difference is
    taken at Holm's first threshold, alpha / m, as in the per-table comparisons with the baseline.

    Args:
        ok: The ok records by table, norm and seed.
        grid: The suite's grid (``suite.json``), for the reference value; may be empty.
        alpha: Family-wise significance level.

    Returns:
        The section's Markdown lines; empty when no key was swept over two or more values.
    """
    grid = grid or {}
    lines: list[str] = []
    paired: list[int] = []
    for (key, context), values in sweeps_of(settings_of(ok)).items():
        if len(values) >= 2:
            table_lines, pairs = _effect_table(ok, key, context, values, grid, alpha)
            lines += table_lines
            paired += pairs
    fewest_pairs = min(paired, default=None)
    if not lines:
        return []
    few = (
        " With 2 seeds a paired test has 1 degree of freedom, and only very large changes are "
        "found with that power."
        if fewest_pairs == 2
        else ""
    )
    return [
        "## Effect of each swept value",
        "",
        "How much each value of a swept key moves each norm's accuracy, against a reference "
        "value of the key (the other swept keys held fixed): the first value the grid lists "
        "that ran (by convention the off setting or the smallest budget), else the first in "
        "sorted order. The two accuracy columns are the norm's mean over all its seeds at the "
        "value and at the reference; Δ is the accuracy at the value minus that at the "
        "reference, in percentage points, from a paired t-test over the seeds both ran (Welch's "
        "when fewer than 2 are shared, so with unequal seeds Δ need not be the difference of "
        "the two columns), with its unadjusted 95% interval, and a p-value "
        f"Holm-corrected over the table's comparisons; {_HIGHER} or {_LOWER} needs a corrected "
        f"p ≤ α = {alpha:g}, whatever the interval. The detectable Δ is the smallest true change "
        "the row's test finds with 80% power at Holm's first threshold (α / the table's number "
        "of tests), from its observed standard error; above 100 pp it reads `> 100`. Each "
        "table is its own exploratory family (ok runs only); the blocked model below tests "
        "the same changes with seed blocks and failures counted." + few,
        "",
        *lines,
    ]


@dataclass(frozen=True)
class ValueEffects:
    """One swept key's values against its reference value, per norm, judged as one family.

    Attributes:
        reference: The reference value.
        at_reference: Each norm's accuracy per seed at the reference value (ok runs).
        found: Per compared (norm, value): the norm, the value and its accuracy per seed.
        judged: Each of ``found``'s comparisons with the reference, Holm over the family.
        unmatched: (norm, value) with ok runs at the value but none at the reference.
    """

    reference: object
    at_reference: Mapping[str, Seeds]
    found: tuple[tuple[str, object, Seeds], ...]
    judged: tuple[Judged, ...]
    unmatched: tuple[tuple[str, object], ...]


def value_effects(
    ok: OkRuns, key: str, values: Sequence[tuple[object, Setting]], grid: Mapping, alpha: float
) -> ValueEffects | None:
    """Each norm at each value of ``key`` against the reference value (paired over seeds,
    :func:`~bench.results.stats.compare_family`), as the effect table and the findings page
    read it; None when no norm has ok runs at both a value and the reference."""
    reference_value_, reference = reference_value(key, values, grid)
    at_reference = accuracy_of(ok[reference.block])
    found, unmatched = [], []
    for value, setting in values:
        if setting is reference:
            continue
        for norm, seeds in sorted(accuracy_of(ok[setting.block]).items()):
            if norm in at_reference:
                found.append((norm, value, seeds))
            else:
                unmatched.append((norm, value))
    if not found:
        return None
    judged = compare_family([(seeds, at_reference[norm]) for norm, _, seeds in found], alpha)
    return ValueEffects(
        reference_value_, at_reference, tuple(found), tuple(judged), tuple(unmatched)
    )


def _effect_table(
    ok: OkRuns,
    key: str,
    context: str,
    values: Sequence[tuple[object, Setting]],
    grid: Mapping,
    alpha: float,
) -> tuple[list[str], list[int]]:
    """One table of the effect section: each norm at each value against the reference value,
    Holm over the table; with the pairs each paired test had."""
    effects = value_effects(ok, key, values, grid, alpha)
    if effects is None:
        return [], []
    reference_value_, at_reference = effects.reference, effects.at_reference
    found, judged, unmatched = effects.found, effects.judged, effects.unmatched
    rows = [
        [
            code(norm),
            code(grid_value_text(value)),
            accuracy_text(mean_ci(list(seeds.values())), say_no_ci=False),
            accuracy_text(mean_ci(list(at_reference[norm].values())), say_no_ci=False),
            difference_text(j.test),
            NA if j.p_holm is None else pvalue_text(j.p_holm),
            _EFFECT_WORDS.get(j.verdict, j.verdict),
            detectable_text(j.detectable),
        ]
        for (norm, value, seeds), j in zip(found, judged, strict=True)
    ]
    reference_name = grid_value_text(reference_value_)
    headers = [
        "norm",
        "value",
        "accuracy % (mean ± 95% CI, n)",
        f"accuracy % at {reference_name} (mean ± 95% CI, n)",
        f"Δ vs {reference_name} (pp, 95% CI, unadjusted)",
        "p (Holm)",
        "verdict",
        "detectable Δ (pp, 80% power)",
    ]
    reference_text = code(reference_name)
    lines = [f"### {code(key)} on {code(context)}, against {reference_text}", ""]
    lines += [table(rows, headers), ""]
    if unmatched:
        said = ", ".join(f"{code(norm)} at {code(grid_value_text(v))}" for norm, v in unmatched)
        lines += [f"Not compared (no ok run at {reference_text}): {said}.", ""]
    return lines, [j.test.n for j in judged if j.test.test == PAIRED]
