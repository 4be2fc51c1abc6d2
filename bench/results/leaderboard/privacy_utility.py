"""The privacy-utility section: accuracy against epsilon per norm when the grid sweeps
``privacy.epsilon``, as tables, a linked figure and each norm's slope per doubling of epsilon."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bench.results import figures
from bench.results.leaderboard.collect import OkRuns
from bench.results.leaderboard.markdown import (
    NA,
    accuracy_text,
    code,
    interval_text,
    pp_text,
    pvalue_text,
    table,
)
from bench.results.leaderboard.sweeps import accuracy_of, settings_of, sweeps_of
from bench.results.stats import (
    BETTER,
    NO_DIFFERENCE,
    NOT_TESTED,
    WORSE,
    MeanCI,
    Trend,
    judge_family,
    mean_ci,
    trend,
)

#: The swept key whose values give the privacy-utility curves.
EPSILON_KEY = "privacy.epsilon"


@dataclass(frozen=True)
class _Curve:
    """Accuracy of each norm at each epsilon on one panel (a backbone, other keys fixed)."""

    panel: str
    epsilons: tuple[float, ...]
    cells: Mapping[tuple[str, float], MeanCI]  # (norm, epsilon) -> accuracy
    runs: Mapping[tuple[str, float], tuple[float, ...]]  # (norm, epsilon) -> accuracy per seed

    @property
    def norms(self) -> list[str]:
        """Norms by accuracy at the largest epsilon they ran (best first), then by name."""

        def key(norm: str) -> tuple:
            at = [e for e in self.epsilons if (norm, e) in self.cells]
            return (-max(at), -self.cells[norm, max(at)].mean, norm)

        return sorted({norm for norm, _ in self.cells}, key=key)


def epsilon_curves(ok: OkRuns) -> list[_Curve]:
    """One curve set per panel that swept ``privacy.epsilon`` over positive numbers."""
    curves = []
    for (key, panel), values in sweeps_of(settings_of(ok)).items():
        if key != EPSILON_KEY:
            continue
        cells = {}
        runs = {}
        epsilons = []
        for value, setting in values:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                continue
            epsilons.append(float(value))
            for norm, seeds in accuracy_of(ok[setting.block]).items():
                if seeds:
                    cells[norm, float(value)] = mean_ci(list(seeds.values()))
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
        for curve in epsilon_curves(ok)
        for norm in curve.norms
        for epsilon in curve.epsilons
        if (acc := curve.cells.get((norm, epsilon))) is not None
    ]


def privacy_utility_section(
    ok: OkRuns, alpha: float = 0.05, figure: str = figures.PRIVACY_UTILITY_PNG
) -> list[str]:
    """Accuracy against epsilon per norm, as tables, a linked figure and each norm's slope per
    doubling of epsilon (:func:`trend`, Holm-corrected over the panel's norms).

    Args:
        ok: The ok records by table, norm and seed.
        alpha: Family-wise significance level of the slopes' tests.
        figure: The figure's file name (TAN simulations have their own, `figures.figure_name`).

    Returns:
        The section's Markdown lines; empty when ``privacy.epsilon`` was not swept.
    """
    curves = epsilon_curves(ok)
    if not curves:
        return []
    lines = [
        "## Privacy–utility",
        "",
        f"Test accuracy % against the target ε (the swept `{EPSILON_KEY}`): mean ± 95% "
        "Student-t interval over seeds (n); one seed gives no interval. Each ε is its own "
        "calibrated run (noise multiplier for that ε at the suite's δ). Ok runs only (per "
        "protocol), as in every section across swept values: where a run failed or collapsed, "
        "the per-ε tables above (intention to treat, the run at chance) read lower.",
        "",
        f"![privacy-utility]({figure})",
        "",
    ]
    for curve in curves:
        headers = ["norm", *[f"ε = {e:g}" for e in curve.epsilons]]
        rows = [
            [
                code(norm),
                *[
                    accuracy_text(curve.cells[norm, e], say_no_ci=False)
                    if (norm, e) in curve.cells
                    else NA
                    for e in curve.epsilons
                ],
            ]
            for norm in curve.norms
        ]
        lines += [
            f"### {code(curve.panel)}",
            "",
            table(rows, headers),
            "",
            *_trend_table(curve, alpha),
        ]
    return lines


#: Verdict words of a slope.
_TREND_WORDS = {
    BETTER: "rises with ε",
    WORSE: "falls with ε",
    NO_DIFFERENCE: "no significant trend",
}


def curve_trends(curve: _Curve) -> list[tuple[str, Trend]]:
    """Per norm, in the curve's order: the least-squares slope of accuracy per doubling of
    epsilon over all its runs (no seed blocks), as the section and the findings page test it."""
    fits = []
    for norm in curve.norms:
        xs = [math.log2(e) for e in curve.epsilons for _ in curve.runs.get((norm, e), ())]
        ys = [a for e in curve.epsilons for a in curve.runs.get((norm, e), ())]
        fits.append((norm, trend(xs, ys)))
    return fits


def _trend_table(curve: _Curve, alpha: float) -> list[str]:
    """Per norm: the slope of accuracy per doubling of epsilon over all its runs, Holm-tested."""
    fits = curve_trends(curve)
    rows = []
    for (norm, fit), j in zip(fits, judge_family([fit for _, fit in fits], alpha), strict=True):
        if j.verdict == NOT_TESTED:
            rows.append([code(norm), NA, NA, f"not tested ({fit.reason})", NA, str(fit.n)])
            continue
        rows.append(
            [
                code(norm),
                interval_text(fit.slope, fit.half_width or 0.0),
                pvalue_text(j.p_holm),
                _TREND_WORDS[j.verdict],
                # A slope is per doubling, not a difference of accuracies: no 100 pp cap.
                NA if j.detectable is None else pp_text(j.detectable),
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
        "norms tested. The runs at different ε share their seeds' initialisation and augmentation "
        "(and their noise and batches too, in records that predate per-cell streams: see the "
        "header), so the points are not independent: the interval treats them as if they were, an "
        "approximation (a seed's shared offset widens it; a seed-specific slope narrows it). A "
        "straight line in log ε is a model, not a finding: read the table as whether accuracy "
        "moves with the budget at all, and by about how much. An exploratory family; the trend "
        "with seed blocks (below, *Swept keys as one blocked model*) removes each seed's shared "
        "offset, and where the two disagree it is the one to read.",
        "",
        table(rows, headers),
        "",
    ]
