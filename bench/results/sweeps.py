"""Leaderboard sections for swept grid keys: rank agreement across values, privacy-utility curves.

A grid that sweeps a key beyond backbone, norm and seed (``training.steps``, ``privacy.epsilon``)
gives each value its own leaderboard table (``resnet9 [training.steps=400]``). The sections here
read across those tables: whether the norms rank alike at two values of a key, and, when the key
is ``privacy.epsilon``, accuracy against epsilon.
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
                    f"{value_a} → {value_b}",
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


@dataclass(frozen=True)
class _Curve:
    """Accuracy of each norm at each epsilon on one panel (a backbone, other keys fixed)."""

    panel: str
    epsilons: tuple[float, ...]
    cells: Mapping[tuple[str, float], stats.MeanCI]  # (norm, epsilon) -> accuracy

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
        epsilons = []
        for value, setting in values:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                continue
            epsilons.append(float(value))
            for norm, seeds in _accuracy(ok[setting.block]).items():
                if seeds:
                    cells[norm, float(value)] = stats.mean_ci(list(seeds.values()))
        if cells:
            curves.append(_Curve(panel, tuple(epsilons), cells))
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


def privacy_utility_section(ok: OkRuns) -> list[str]:
    """Accuracy against epsilon per norm, as tables and a linked figure.

    Args:
        ok: The ok records by table, norm and seed.

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
        ]
    return lines
