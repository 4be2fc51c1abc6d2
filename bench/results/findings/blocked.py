"""The blocked model's columns as families: each value against the reference, the interaction
with the baseline, the slope per doubling and the slope against the baseline's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.results.findings.families import ITT, Family, Member, direction_of
from bench.results.leaderboard.blocked import SweepTests, sweep_tests, swept_keys
from bench.results.leaderboard.collect import Collected
from bench.results.leaderboard.markdown import code
from bench.results.leaderboard.protocol import Protocol
from bench.results.stats import judge_family
from bench.results.stats.blocked import Contrast

#: A blocked model's test, as the members' text names it.
_TEST = "blocked model with seed blocks"


def _family(
    name: str,
    unit: str,
    tests: Sequence[tuple[str, tuple[str, str], Contrast | None]],
    alpha: float,
) -> Family:
    """A column of the blocked section, judged as one family (`judge_family`: Holm over its
    tested rows, each row's verdict and detectable effect at Holm's first threshold)."""
    judged = iter(judge_family([c for _, _, c in tests if c is not None], alpha))
    members = []
    for subject, claims, c in tests:
        if c is None:
            members.append(Member(subject, None, claims, None, None, _TEST, None, None))
            continue
        j = next(judged)
        test = f"{_TEST}, {c.df:g} residual df"
        verdict = direction_of(j.verdict)
        members.append(
            Member(subject, verdict, claims, c.estimate, c.half_width, test, j.p_holm, j.detectable)
        )
    return Family(name, False, ITT, unit, tuple(members))


def _sweep_families(
    key: str, context: str, tests: SweepTests, baseline: str, alpha: float
) -> list[Family]:
    """The families of one swept key's blocked tables, in the leaderboard's rows and order."""
    where = f"{code(key)} on {code(context)}"
    ref, base = code(tests.ref), code(baseline)
    change = [
        (
            f"{code(n)} at {code(key)} = {code(v)}",
            (f"is more accurate than at {ref}", f"is less accurate than at {ref}"),
            own,
        )
        for n, v, own, _ in tests.changes
    ]
    beyond = (f"exceeds {base}'s", f"falls short of {base}'s")
    inter = [
        (f"{code(n)}'s change from {code(key)} = {ref} to {code(v)}", beyond, c)
        for n, v, _, c in tests.changes
        if n != baseline
    ]
    families = [
        _family(f"blocked model, {where}: each value against {ref}", "pp", change, alpha),
        _family(f"blocked model, {where}: interaction with {base}", "pp", inter, alpha),
    ]
    if tests.trends is not None:
        rises = (f"rises with {code(key)}", f"falls with {code(key)}")
        slopes = [(f"{code(n)}'s accuracy", rises, slope) for n, slope, _ in tests.trends]
        diffs = [
            (f"{code(n)}'s slope along {code(key)}", beyond, diff)
            for n, _, diff in tests.trends
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
    simulated: bool,
) -> list[Family]:
    """Every swept key's blocked-model families, over the DP tables (``simulated``: the TAN
    simulations'), as the leaderboard's blocked section tests them (`sweep_tests`)."""
    families = []
    for key, context, values, series in swept_keys(collected, protocol, simulated):
        tests = sweep_tests(key, values, series, baseline, grid)
        if tests is not None:
            families += _sweep_families(key, context, tests, baseline, alpha)
    return families
