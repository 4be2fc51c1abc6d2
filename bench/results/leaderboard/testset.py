"""The primary table's test-set uncertainty: each comparison's interval resampling seeds and test
examples jointly, from the runs' per-example predictions (`bench.predictions`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bench import predictions
from bench.results.leaderboard.collect import Cell
from bench.results.leaderboard.markdown import code, interval_text, table
from bench.results.leaderboard.survivorship import cell_outcomes
from bench.results.stats import BackboneAnalysis
from bench.results.stats.itt import Outcomes
from bench.results.stats.testset import JointInterval, joint_interval

#: Why there is no interval, for a run that predates the predictions files.
_PREDATE = "no per-example predictions (records before they were written)"


def _scores(
    cell: Cell, outcome: Outcomes, run_dir: Path, examples: int | None
) -> tuple[dict[object, np.ndarray], str | None]:
    """Per seed, each test example's score under intention to treat (right 1, wrong 0; a
    failed or collapsed run every example at chance), or why they cannot be had."""
    out: dict[object, np.ndarray] = {}
    for seed, score in outcome.scores.items():
        record = cell.ok.get(seed)
        if record is None or seed in outcome.collapsed:
            if examples is None:
                return {}, "a failed run, and no run's predictions give the test set's size"
            out[seed] = np.full(examples, score)
            continue
        field = record.get("predictions")
        if not field:
            return {}, _PREDATE
        right = predictions.correct(run_dir, field)
        if isinstance(right, str):
            return {}, right
        out[seed] = right.astype(float)
    return out, None


def _examples(norms: Mapping[str, Cell]) -> int | None:
    """The test set's size, from any run's predictions field."""
    for cell in norms.values():
        for record in cell.ok.values():
            field = record.get("predictions")
            if isinstance(field, Mapping) and isinstance(field.get("n"), int):
                return field["n"]
    return None


def testset_lines(
    norms: Mapping[str, Cell],
    analysis: BackboneAnalysis,
    run_dir: Path,
    collapse: float,
) -> list[str]:
    """The primary table's comparisons with the baseline, each with its seeds-only interval
    and its seeds x test-examples interval; one line instead when no run has predictions."""
    baseline = analysis.baseline
    if baseline not in norms or not any(r.vs_baseline for r in analysis.results):
        return []
    if _examples(norms) is None:
        return [
            "**Test-set uncertainty:** not computed: the records have "
            f"{_PREDATE}; the intervals above cover training randomness (seeds) only, not "
            "the test set's own sampling error (about 0.5 pp per accuracy on 10,000 images).",
            "",
        ]
    outcomes = cell_outcomes(norms, collapse)
    examples = _examples(norms)
    theirs, why_not = _scores(norms[baseline], outcomes[baseline], run_dir, examples)
    rows = []
    for result in analysis.results:
        comparison = result.vs_baseline
        if comparison is None or comparison.half_width is None or result.norm == baseline:
            continue
        ours, why = _scores(norms[result.norm], outcomes[result.norm], run_dir, examples)
        joint = None if why or why_not else joint_interval(ours, theirs)
        seeds_only = interval_text(comparison.diff, comparison.half_width)
        rows.append(
            [
                code(result.norm),
                seeds_only,
                "—" if joint is None else _joint_text(joint),
                why or why_not or ("fewer than 2 shared seeds" if joint is None else ""),
            ]
        )
    return [
        f"**Test-set uncertainty** (intention to treat, Δ vs `{baseline}` in pp): the seeds-only "
        "interval of the table beside a paired t-interval whose variance adds the test set's "
        "(the variance over the test examples of each example's difference, averaged over the "
        "seeds; never narrower than the seeds-only one; failed and collapsed runs at chance on "
        "every example).",
        "",
        table(rows, ["norm", "Δ, 95% CI (seeds)", "Δ, 95% CI (seeds × test examples)", "note"]),
        "",
    ]


def _joint_text(joint: JointInterval) -> str:
    """``+1.23 [+0.45, +2.01]`` from fractions."""
    return (
        f"{100 * joint.mean:+.2f} [{100 * joint.low:+.2f}, {100 * joint.high:+.2f}] "
        f"(n={joint.seeds})"
    )
