"""Rank agreement across a swept key: Kendall's tau between the norm rankings at two values."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from itertools import combinations

from bench.results.leaderboard.collect import OkRuns
from bench.results.leaderboard.markdown import NA, code, table
from bench.results.leaderboard.sweeps import Setting, settings_of, sweeps_of
from bench.results.record import Record, grid_value_text
from bench.results.stats import RankAgreement, rank_agreement
from bench.results.stats.descriptive import Seeds

#: A setting counts as cheaper than another when its ok runs took at most this fraction of the
#: other's mean wall-clock time; closer than that, the two are "of similar cost".
CHEAPER_RATIO = 1 / 1.1

#: How a row whose tau was not computed begins its reading.
NOT_COMPUTED = "Not computed: "

#: The columns of an agreement table.
HEADERS = [
    "backbone (rest fixed)",
    "values",
    "wall s/run",
    "norms",
    "Kendall τ-b (95% CI)",
    "reading",
]


def agreement_sections(
    ok: OkRuns, scores: Mapping[str, Mapping[str, Seeds]], exclude: Collection[str] = ()
) -> list[str]:
    """One "Agreement across `key`" section per swept key: Kendall's tau between the norm
    rankings at each pair of the key's values, in value order (numbers numerically), the other
    swept keys held fixed.

    Args:
        ok: The ok records by table, norm and seed (the tables swept, their wall time).
        scores: Each table's accuracy per norm and seed under intention to treat, as the
            tables score it (a failed or collapsed run at chance): what is ranked.
        exclude: Swept keys reported elsewhere (the datasets, ranked in their own section).

    Returns:
        The sections' Markdown lines; empty when no key was swept over two or more values.
    """
    rows: dict[str, list[list[str]]] = {}
    for key, context, values in sweep_pairs(ok):
        if key not in exclude:
            rows.setdefault(key, []).extend(
                agreement_row(ok, scores, context, first, second)
                for first, second in combinations(values, 2)
            )
    lines: list[str] = []
    for key, key_rows in sorted(rows.items()):
        lines += [f"## Agreement across {code(key)}", ""]
        readings = {row[-1] for row in key_rows}
        if len(readings) == 1 and readings.pop().startswith(NOT_COMPUTED):
            # Every pair fails for one reason: say it once rather than in a row per pair.
            why = key_rows[0][-1].removeprefix(NOT_COMPUTED)
            lines += [f"Kendall's τ-b was computed for no pair of values of {code(key)}: {why}", ""]
            continue
        lines += [
            f"Do the norms rank alike at two values of {code(key)}? For each pair of "
            "values (numbers in increasing order; every other swept key held fixed): Kendall's "
            "τ-b between the norms' mean accuracies at the two values under intention to treat, "
            "as the tables score them (a failed or collapsed run at chance), over the norms "
            "run at both (+1: same order, −1: reversed), with its 95% seed-joint "
            "bootstrap interval (as the statistics notes say). The wall-clock column is a run's "
            "mean at each value; the reading names the cheaper value when one is at least 10% "
            "cheaper. With few norms τ takes few values and with 2-3 seeds the interval is rough.",
            "",
            table(key_rows, HEADERS),
            "",
        ]
    return lines


def sweep_pairs(ok: OkRuns) -> list[tuple[str, str, list[tuple[object, Setting]]]]:
    """Each swept key with what is held fixed and its settings in value order (two or more)."""
    return [
        (key, context, values)
        for (key, context), values in sweeps_of(settings_of(ok)).items()
        if len(values) >= 2
    ]


def agreement_row(
    ok: OkRuns,
    scores: Mapping[str, Mapping[str, Seeds]],
    context: str,
    first: tuple[object, Setting],
    second: tuple[object, Setting],
) -> list[str]:
    """The rank agreement of two values of a key (the first the smaller), as a table row."""
    (value_a, a), (value_b, b) = first, second
    wall_a, wall_b = _mean_wall_s(ok[a.block]), _mean_wall_s(ok[b.block])
    cheaper_known = (
        wall_a is not None
        and wall_b is not None
        and min(wall_a, wall_b) <= CHEAPER_RATIO * max(wall_a, wall_b)
    )
    names = [code(grid_value_text(value_a)), code(grid_value_text(value_b))]
    if cheaper_known and wall_b < wall_a:
        names.reverse()  # the reading names the cheaper value first
    agreement = rank_agreement(scores.get(a.block, {}), scores.get(b.block, {}))
    cost = (
        NA
        if wall_a is None or wall_b is None
        else f"{wall_a:.0f}, {wall_b:.0f}" + ("" if cheaper_known else " (similar)")
    )
    return [
        code(context),
        f"{code(grid_value_text(value_a))}, {code(grid_value_text(value_b))}",
        cost,
        str(len(agreement.norms)),
        tau_text(agreement),
        reading(agreement, *names, cheaper_known),
    ]


def tau_text(agreement: RankAgreement) -> str:
    """Kendall's tau with its bootstrap interval, as a table cell."""
    if agreement.tau is None:
        return NA
    if agreement.low is None or agreement.high is None:
        return f"{agreement.tau:+.2f} (no interval)"
    return f"{agreement.tau:+.2f} [{agreement.low:+.2f}, {agreement.high:+.2f}]"


def reading(
    agreement: RankAgreement, first: str, second: str, cheaper_known: bool, at: str = "at"
) -> str:
    """One sentence: does the ranking at ``first`` (the cheaper, when known) predict the one at
    ``second``? ``at`` is the preposition (datasets: "on")."""
    if agreement.reason is not None:
        return f"{NOT_COMPUTED}{agreement.reason}."
    subject = f"The ranking {at} {first}" + (" (the cheaper)" if cheaper_known else "")
    other = f"the one {at} {second}"
    if agreement.low is None or agreement.high is None:
        return f"{subject} cannot be judged: the bootstrap gave no defined τ."
    if agreement.low > 0:
        return f"{subject} predicts {other} (interval above 0)."
    if agreement.high < 0:
        return f"{subject} is reversed {at} {second} (interval below 0)."
    return f"{subject} does not reliably predict {other} (interval includes 0)."


def _mean_wall_s(runs: Mapping[str, Mapping[object, Record]]) -> float | None:
    walls = [r.get("wall_s") for seeds in runs.values() for r in seeds.values()]
    walls = [w for w in walls if w is not None]
    return math.fsum(walls) / len(walls) if walls else None
