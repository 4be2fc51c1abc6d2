"""Leaderboard sections for swept grid keys: rank agreement, the effect of each value, and
privacy-utility curves.

A grid that sweeps a key beyond backbone, norm and seed (``training.steps``, ``privacy.epsilon``)
gives each value its own leaderboard table (``resnet9 [training.steps=400]``). The sections here
read across those tables: whether the norms rank alike at two values of a key, how much each
value moves each norm's accuracy against the key's first value (does pruning cost GroupNorm
accuracy? does epsilon 8 beat epsilon 1?), and, when the key is ``privacy.epsilon``, accuracy
against epsilon.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from tabulate import tabulate

from bench.results import figures, stats
from bench.results.record import Record, grid_value_text

#: The swept key whose values give the privacy-utility curves.
EPSILON_KEY = "privacy.epsilon"

#: A setting counts as cheaper than another when its ok runs took at most this fraction of the
#: other's mean wall-clock time; closer than that, the two are "of similar cost".
CHEAPER_RATIO = 1 / 1.1

#: ok records by table (backbone plus swept keys, as the leaderboard names it), norm and seed.
OkRuns = Mapping[str, Mapping[str, Mapping[object, Record]]]

_NA = "—"


@dataclass(frozen=True)
class _Setting:
    """One leaderboard table: a backbone at one value of each swept key."""

    block: str
    backbone: str
    overrides: Mapping[str, object]

    def context(self, key: str) -> str:
        """The table's name without ``key``: what is held fixed while ``key`` varies."""
        others = [
            f"{k}={grid_value_text(v)}" for k, v in sorted(self.overrides.items()) if k != key
        ]
        return f"{self.backbone} [{', '.join(others)}]" if others else self.backbone


def _settings(ok: OkRuns) -> list[_Setting]:
    """The tables that swept at least one key, read from their records."""
    settings = []
    for block, norms in sorted(ok.items()):
        record = next((r for runs in norms.values() for r in runs.values()), None)
        if record is None:
            continue
        overrides = record.get("overrides")
        if isinstance(overrides, Mapping) and overrides and isinstance(record["backbone"], str):
            settings.append(_Setting(block, record["backbone"], dict(overrides)))
    return settings


def _value_key(value: object) -> tuple:
    """Numbers in numeric order, then anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, grid_value_text(value))


def _sweeps(settings: Sequence[_Setting]) -> dict[tuple[str, str], list[tuple[object, _Setting]]]:
    """For each (swept key, what is held fixed): the settings at each value, in value order."""
    found: dict[tuple[str, str], dict[str, tuple[object, _Setting]]] = {}
    for setting in settings:
        for key, value in setting.overrides.items():
            found.setdefault((key, setting.context(key)), {})[grid_value_text(value)] = (
                value,
                setting,
            )
    return {
        group: sorted(values.values(), key=lambda item: _value_key(item[0]))
        for group, values in sorted(found.items())
    }


def _accuracy(runs: Mapping[str, Mapping[object, Record]]) -> dict[str, dict[object, float]]:
    return {
        norm: {seed: float(r["test_acc"]) for seed, r in seeds.items()}
        for norm, seeds in runs.items()
    }


def _mean_wall_s(runs: Mapping[str, Mapping[object, Record]]) -> float | None:
    walls = [r.get("wall_s") for seeds in runs.values() for r in seeds.values()]
    walls = [w for w in walls if w is not None]
    return math.fsum(walls) / len(walls) if walls else None


def _code(text: object) -> str:
    return "`" + str(text).replace("|", "\\|") + "`"


def _reading(agreement: stats.RankAgreement, cheaper_known: bool) -> str:
    """One sentence: does the first setting's ranking predict the second's?"""
    if agreement.reason is not None:
        return f"Not computed: {agreement.reason}."
    subject = "The cheaper setting's ranking" if cheaper_known else "The ranking at the first value"
    other = "the dearer one's" if cheaper_known else "the one at the second"
    if agreement.low is None or agreement.high is None:
        return f"{subject} cannot be judged: the bootstrap gave no defined τ."
    if agreement.low > 0:
        return f"{subject} predicts {other} (interval above 0)."
    if agreement.high < 0:
        return f"{subject} is reversed in {other} (interval below 0)."
    return f"{subject} does not reliably predict {other} (interval includes 0)."


def rank_agreement_section(ok: OkRuns) -> list[str]:
    """Kendall's tau between the norm rankings at each pair of values of each swept key.

    Args:
        ok: The ok records by table, norm and seed.

    Returns:
        The section's Markdown lines; empty when no key was swept over two or more values.
    """
    rows = []
    for (key, context), values in _sweeps(_settings(ok)).items():
        for (value_a, a), (value_b, b) in combinations(values, 2):
            wall_a, wall_b = _mean_wall_s(ok[a.block]), _mean_wall_s(ok[b.block])
            cheaper_known = (
                wall_a is not None
                and wall_b is not None
                and min(wall_a, wall_b) <= CHEAPER_RATIO * max(wall_a, wall_b)
            )
            if cheaper_known and wall_b < wall_a:
                value_a, a, wall_a, value_b, b, wall_b = value_b, b, wall_b, value_a, a, wall_a
            agreement = stats.rank_agreement(_accuracy(ok[a.block]), _accuracy(ok[b.block]))
            if agreement.tau is None:
                tau = _NA
            elif agreement.low is None:
                tau = f"{agreement.tau:+.2f} (no interval)"
            else:
                tau = f"{agreement.tau:+.2f} [{agreement.low:+.2f}, {agreement.high:+.2f}]"
            cost = (
                _NA
                if wall_a is None or wall_b is None
                else f"{wall_a:.0f} → {wall_b:.0f}" + ("" if cheaper_known else " (similar)")
            )
            rows.append(
                [
                    _code(context),
                    _code(key),
                    f"{_code(grid_value_text(value_a))} → {_code(grid_value_text(value_b))}",
                    cost,
                    str(len(agreement.norms)),
                    tau,
                    _reading(agreement, cheaper_known),
                ]
            )
    if not rows:
        return []
    headers = [
        "backbone (rest fixed)",
        "swept key",
        "values (cheaper → dearer)",
        "wall s/run",
        "norms",
        "Kendall τ-b (95% CI)",
        "reading",
    ]
    return [
        "## Rank agreement across swept values",
        "",
        "Do the norms rank alike at two values of a swept key? For each backbone and pair of "
        "values (other swept keys held fixed): Kendall's τ-b between the norms' mean accuracies "
        "at the two values, over the norms with ok runs at both (+1: same order, −1: reversed). "
        f"95% interval: percentile bootstrap over seeds ({stats.BOOTSTRAP_RESAMPLES} resamples; "
        "each (value, norm) cell's seeds redrawn with replacement, independently of the other "
        "cells; fixed generator seed, so the report is reproducible). The cheaper value is the "
        "one whose ok runs took less wall-clock time on average (by at least 10%; otherwise "
        "'similar' and the values are in sorted order). With few norms τ takes few values, and "
        "with 2-3 seeds a cell has few distinct resampled means: read the interval as rough.",
        "",
        tabulate(rows, headers, tablefmt="github", disable_numparse=True),
        "",
    ]


def _reference_value(
    key: str, values: Sequence[tuple[object, _Setting]], grid: Mapping
) -> tuple[object, _Setting]:
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


def value_effect_section(ok: OkRuns, grid: Mapping | None = None, alpha: float = 0.05) -> list[str]:
    """How much each value of a swept key moves each norm's accuracy, against the first value.

    For each swept key and what is held fixed (a backbone and the other swept keys' values),
    every norm's accuracy at each other value is compared with its accuracy at the reference
    value (the grid's first listed one that ran, else the first in value order) by
    :func:`stats.compare`: a paired t-test over the
    seeds both ran. The p-values are Holm-corrected over the table's comparisons, and the
    detectable difference is taken at Holm's first threshold, alpha / m, as in the per-table
    comparisons with the baseline.

    Args:
        ok: The ok records by table, norm and seed.
        grid: The suite's grid (``suite.json``), for the reference value; may be empty.
        alpha: Family-wise significance level.

    Returns:
        The section's Markdown lines; empty when no key was swept over two or more values.
    """
    grid = grid or {}
    lines: list[str] = []
    fewest_pairs = None
    for (key, context), values in _sweeps(_settings(ok)).items():
        if len(values) < 2:
            continue
        reference_value, reference = _reference_value(key, values, grid)
        at_reference = _accuracy(ok[reference.block])
        found = []
        unmatched = []  # a norm with runs at a value but none at the reference
        for value, setting in values:
            if setting is reference:
                continue
            for norm, seeds in sorted(_accuracy(ok[setting.block]).items()):
                if norm in at_reference:
                    comparison = stats.compare(seeds, at_reference[norm])
                    found.append((norm, value, stats.mean_ci(list(seeds.values())), comparison))
                else:
                    unmatched.append(f"{_code(norm)} at {_code(grid_value_text(value))}")
        if not found:
            continue
        adjusted = stats.holm([c.pvalue for *_, c in found])
        m = sum(p is not None for p in adjusted)
        paired = [c.n for *_, c in found if c.test == stats.PAIRED]
        if paired:
            fewest_pairs = min(paired + ([fewest_pairs] if fewest_pairs else []))
        rows = []
        for (norm, value, acc, comparison), p in zip(found, adjusted, strict=True):
            verdict = stats.verdict(comparison, p, alpha)
            verdict = {stats.BETTER: _HIGHER, stats.WORSE: _LOWER}.get(verdict, verdict)
            detectable = (
                stats.detectable_difference(comparison.se, comparison.df, alpha / m)
                if m and comparison.tested
                else None
            )
            rows.append(
                [
                    _code(norm),
                    _code(grid_value_text(value)),
                    _fmt_accuracy(acc),
                    _fmt_accuracy(stats.mean_ci(list(at_reference[norm].values()))),
                    stats.difference_text(comparison),
                    _NA if p is None else stats.pvalue_text(p),
                    verdict,
                    stats.detectable_text(detectable),
                ]
            )
        headers = [
            "norm",
            "value",
            "accuracy % (mean ± 95% CI, n)",
            f"accuracy % at {grid_value_text(reference_value)} (mean ± 95% CI, n)",
            f"Δ vs {grid_value_text(reference_value)} (pp, 95% CI, unadjusted)",
            "p (Holm)",
            "verdict",
            "detectable Δ (pp, 80% power)",
        ]
        reference_text = _code(grid_value_text(reference_value))
        lines += [
            f"### {_code(key)} on {_code(context)}, against {reference_text}",
            "",
            tabulate(rows, headers, tablefmt="github", disable_numparse=True),
            "",
        ]
        if unmatched:
            lines += [
                f"Not compared (no ok run at {reference_text}): {', '.join(unmatched)}.",
                "",
            ]
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
        "of tests), from its observed standard error; above 100 pp it reads `> 100`." + few,
        "",
        *lines,
    ]


@dataclass(frozen=True)
class _Curve:
    """Accuracy of each norm at each epsilon on one panel (a backbone, other keys fixed)."""

    panel: str
    epsilons: tuple[float, ...]
    cells: Mapping[tuple[str, float], stats.MeanCI]  # (norm, epsilon) -> accuracy
    runs: Mapping[tuple[str, float], tuple[float, ...]]  # (norm, epsilon) -> accuracy per seed

    @property
    def norms(self) -> list[str]:
        """Norms by accuracy at the largest epsilon they ran (best first), then by name."""

        def key(norm: str) -> tuple:
            at = [e for e in self.epsilons if (norm, e) in self.cells]
            return (-max(at), -self.cells[norm, max(at)].mean, norm)

        return sorted({norm for norm, _ in self.cells}, key=key)


def _curves(ok: OkRuns) -> list[_Curve]:
    """One curve set per panel that swept ``privacy.epsilon`` over positive numbers."""
    curves = []
    for (key, panel), values in _sweeps(_settings(ok)).items():
        if key != EPSILON_KEY:
            continue
        cells = {}
        runs = {}
        epsilons = []
        for value, setting in values:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                continue
            epsilons.append(float(value))
            for norm, seeds in _accuracy(ok[setting.block]).items():
                if seeds:
                    cells[norm, float(value)] = stats.mean_ci(list(seeds.values()))
                    runs[norm, float(value)] = tuple(seeds.values())
        if cells:
            curves.append(_Curve(panel, tuple(epsilons), cells, runs))
    return curves


def curve_points(ok: OkRuns) -> list[figures.CurvePoint]:
    """The privacy-utility figure's points, panel by panel; empty when epsilon was not swept."""
    return [
        figures.CurvePoint(
            panel=curve.panel,
            norm=norm,
            epsilon=epsilon,
            acc_pct=100 * acc.mean,
            acc_half_width_pct=None if acc.half_width is None else 100 * acc.half_width,
        )
        for curve in _curves(ok)
        for norm in curve.norms
        for epsilon in curve.epsilons
        if (acc := curve.cells.get((norm, epsilon))) is not None
    ]


def _fmt_accuracy(acc: stats.MeanCI) -> str:
    if acc.half_width is None:
        return f"{100 * acc.mean:.2f} (n={acc.n})"
    return f"{100 * acc.mean:.2f} ± {100 * acc.half_width:.2f} (n={acc.n})"


def privacy_utility_section(ok: OkRuns, alpha: float = 0.05) -> list[str]:
    """Accuracy against epsilon per norm, as tables, a linked figure and each norm's slope per
    doubling of epsilon (:func:`stats.trend`, Holm-corrected over the panel's norms).

    Args:
        ok: The ok records by table, norm and seed.
        alpha: Family-wise significance level of the slopes' tests.

    Returns:
        The section's Markdown lines; empty when ``privacy.epsilon`` was not swept.
    """
    curves = _curves(ok)
    if not curves:
        return []
    lines = [
        "## Privacy–utility",
        "",
        f"Test accuracy % against the target ε (the swept `{EPSILON_KEY}`): mean ± 95% "
        "Student-t interval over seeds (n); one seed gives no interval. Each ε is its own "
        "calibrated run (noise multiplier for that ε at the suite's δ); the numbers are those of "
        "the per-ε tables above.",
        "",
        f"![privacy-utility]({figures.PRIVACY_UTILITY_PNG})",
        "",
    ]
    for curve in curves:
        headers = ["norm", *[f"ε = {e:g}" for e in curve.epsilons]]
        rows = [
            [
                _code(norm),
                *[
                    _fmt_accuracy(curve.cells[norm, e]) if (norm, e) in curve.cells else _NA
                    for e in curve.epsilons
                ],
            ]
            for norm in curve.norms
        ]
        lines += [
            f"### {_code(curve.panel)}",
            "",
            tabulate(rows, headers, tablefmt="github", disable_numparse=True),
            "",
            *_trend_table(curve, alpha),
        ]
    return lines


#: Verdict words of a slope.
_RISES, _FALLS, _FLAT = "rises with ε", "falls with ε", "no significant trend"


def _trend_table(curve: _Curve, alpha: float) -> list[str]:
    """Per norm: the slope of accuracy per doubling of epsilon over all its runs, Holm-tested."""
    fits = []
    for norm in curve.norms:
        xs = [math.log2(e) for e in curve.epsilons for _ in curve.runs.get((norm, e), ())]
        ys = [a for e in curve.epsilons for a in curve.runs.get((norm, e), ())]
        fits.append((norm, stats.trend(xs, ys)))
    adjusted = stats.holm([fit.pvalue for _, fit in fits])
    m = sum(p is not None for p in adjusted)
    rows = []
    for (norm, fit), p in zip(fits, adjusted, strict=True):
        if not fit.tested or fit.slope is None or p is None:
            rows.append([_code(norm), _NA, _NA, f"not tested ({fit.reason})", _NA, str(fit.n)])
            continue
        verdict = _FLAT if p > alpha or fit.slope == 0 else _RISES if fit.slope > 0 else _FALLS
        detectable = stats.detectable_difference(fit.se, fit.df, alpha / m)
        half = 100 * (fit.half_width or 0.0)
        slope = 100 * fit.slope
        rows.append(
            [
                _code(norm),
                f"{slope:+.2f} [{slope - half:+.2f}, {slope + half:+.2f}]",
                stats.pvalue_text(p),
                verdict,
                # A slope is per doubling, not a difference of accuracies: no 100 pp cap.
                _NA if detectable is None else stats.pp_text(detectable),
                str(fit.n),
            ]
        )
    if not rows:
        return []
    headers = [
        "norm",
        "slope (pp per doubling of ε, 95% CI, unadjusted)",
        "p (Holm)",
        "verdict",
        "detectable slope (pp, 80% power)",
        "runs",
    ]
    return [
        "Slope: the least-squares line of accuracy against log2 ε through every run of the norm "
        "(each seed at each ε one point, n - 2 degrees of freedom), with its t-interval; the "
        "test of a zero slope is Holm-corrected over the norms of the panel, and the "
        "detectable slope is the smallest that test finds with 80% power at α / the number of "
        "norms tested. The runs at different ε share their seeds (initialisation and batches), so "
        "the points are not independent: the interval treats them as if they were, an "
        "approximation (a seed's shared offset widens it; a seed-specific slope narrows it). A "
        "straight line in log ε is a model, not a finding: read the table as whether accuracy "
        "moves with the budget at all, and by about how much.",
        "",
        tabulate(rows, headers, tablefmt="github", disable_numparse=True),
        "",
    ]
