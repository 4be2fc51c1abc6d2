"""The blocked model's columns as families: each value against the reference, the interaction
with the baseline, the slope per doubling and the slope against the baseline's."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.results.findings.families import ITT, Family, Member
from bench.results.leaderboard.blocked import (
    change_contrast,
    itt_series,
    log2_covariate,
    slope_contrast,
)
from bench.results.leaderboard.collect import Collected
from bench.results.leaderboard.markdown import code
from bench.results.leaderboard.protocol import Protocol
from bench.results.leaderboard.sweeps import Setting, reference_value, settings_of, sweeps_of
from bench.results.record import grid_value_text
from bench.results.stats import detectable_difference, holm
from bench.results.stats.blocked import (
    Contrast,
    Series,
    paired_differences,
)

#: A blocked model's test, as the members' text names it.
_TEST = "blocked model with seed blocks"


def _family(
    name: str,
    unit: str,
    tests: Sequence[tuple[str, tuple[str, str], Contrast | None]],
    alpha: float,
) -> Family:
    """A column of the blocked section, Holm-corrected over its rows, with each row's verdict
    and detectable effect at Holm's first threshold (as `judge_family` gives the others)."""
    adjusted = holm([None if c is None else c.pvalue for _, _, c in tests])
    m = sum(p is not None for p in adjusted)
    members = []
    for (subject, claims, c), p in zip(tests, adjusted, strict=True):
        if c is None or p is None:
            members.append(Member(subject, None, claims, None, None, _TEST, None, None))
            continue
        direction = 0 if p > alpha or c.estimate == 0 else int(math.copysign(1, c.estimate))
        test = f"{_TEST}, {c.df:g} residual df"
        detectable = detectable_difference(c.se, c.df, alpha / m)
        members.append(
            Member(subject, direction, claims, c.estimate, c.half_width, test, p, detectable)
        )
    return Family(name, False, ITT, unit, tuple(members))


def _sweep_families(
    key: str,
    context: str,
    values: Sequence[tuple[object, Setting]],
    full: Mapping[str, Series],
    baseline: str,
    grid: Mapping,
    alpha: float,
) -> list[Family]:
    """The families of one swept key's blocked tables (none without a baseline run)."""
    if baseline not in full:
        return []
    ref = grid_value_text(reference_value(key, values, grid)[0])
    blocks = {grid_value_text(v): setting.block for v, setting in values}
    norms = sorted(full, key=lambda n: (n != baseline, n))
    pairs = [(n, v) for n in norms for v in blocks if v != ref and blocks[v] in full[n]]
    where = f"{code(key)} on {code(context)}"
    ref_code, base = code(ref), code(baseline)
    change = [
        (
            f"{code(n)} at {code(key)} = {code(v)}",
            (f"is more accurate than at {ref_code}", f"is less accurate than at {ref_code}"),
            change_contrast(full[n], blocks[v], blocks[ref]),
        )
        for n, v in pairs
    ]
    beyond = (f"exceeds {base}'s", f"falls short of {base}'s")
    inter = [
        (
            f"{code(n)}'s change from {code(key)} = {ref_code} to {code(v)}",
            beyond,
            change_contrast(paired_differences(full[n], full[baseline]), blocks[v], blocks[ref]),
        )
        for n, v in pairs
        if n != baseline
    ]
    families = [
        _family(f"blocked model, {where}: each value against {ref_code}", "pp", change, alpha),
        _family(f"blocked model, {where}: interaction with {base}", "pp", inter, alpha),
    ]
    covariate = log2_covariate(values)
    if covariate is not None and len(set(covariate.values())) >= 3:
        along = {n: {v: s[b] for v, b in blocks.items() if b in s} for n, s in full.items()}
        rises = (f"rises with {code(key)}", f"falls with {code(key)}")
        slopes = [
            (f"{code(n)}'s accuracy", rises, slope_contrast(along[n], covariate)) for n in norms
        ]
        diffs = [
            (
                f"{code(n)}'s slope along {code(key)}",
                beyond,
                slope_contrast(paired_differences(along[n], along[baseline]), covariate),
            )
            for n in norms
            if n != baseline
        ]
        unit = "pp per doubling"
        families.append(_family(f"blocked model, {where}: slope per doubling", unit, slopes, alpha))
        name = f"blocked model, {where}: slope against {base}'s"
        families.append(_family(name, unit, diffs, alpha))
    return families


def blocked_families(
    collected: Collected,
    protocol: Protocol,
    baseline: str,
    grid: Mapping,
    alpha: float,
    ok: Mapping,
) -> list[Family]:
    """Every swept key's blocked-model families, over the tables of ``ok`` (the DP tables' ok
    runs, or the TAN simulations'), as the leaderboard's blocked section tests them."""
    settings = settings_of(ok)
    by_backbone: dict[str, list[Setting]] = {}
    for setting in settings:
        by_backbone.setdefault(setting.backbone, []).append(setting)
    full = {b: itt_series(collected, group, protocol) for b, group in by_backbone.items()}
    families = []
    for (key, context), values in sweeps_of(settings).items():
        if len(values) >= 2:
            series = full[values[0][1].backbone]
            families += _sweep_families(key, context, values, series, baseline, grid, alpha)
    return families
