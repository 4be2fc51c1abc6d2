"""The tuning table as a grid: one row per norm, one column per candidate value (in numeric
order), each cell the candidate's validation accuracy over its tuning seeds, the selected one
in bold."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from bench.results.leaderboard.collect import block_of, is_tuning
from bench.results.leaderboard.markdown import NA, code, table
from bench.results.leaderboard.order import numeric_key
from bench.results.record import Record, grid_value_text

#: A candidate: its tuned values as sorted (key, value) pairs.
Candidate = tuple[tuple[str, object], ...]


def tuning_grid_lines(
    tuning: Sequence[Record], records: Sequence[Record], tune_overrides: Sequence[str] = ()
) -> list[str]:
    """One norm × candidate grid per table the tuning runs ran at.

    Args:
        tuning: The tuning-stage records (``stage == "tune"``).
        records: Every record: the final runs' ``tuned`` field names the selected candidate.
        tune_overrides: The keys ``tune.overrides`` sets for the tuning runs only, which a final
            run may differ in and still use the tuning runs' selection.

    Returns:
        Markdown lines; a sentence when no tuning run is recorded.
    """
    groups: dict[str, dict[str, dict[Candidate, list[Record]]]] = {}
    for r in tuning:
        values = r.get("tuned") if isinstance(r.get("tuned"), Mapping) else {}
        norms = groups.setdefault(str(block_of(r)), {})
        norms.setdefault(str(r.get("norm")), {}).setdefault(_candidate(values), []).append(r)
    if not groups:
        return ["No tuning run recorded yet.", ""]
    finals = [r for r in records if not is_tuning(r)]
    lines = [
        "Each cell: mean validation accuracy % over the candidate's tuning seeds ± their SD "
        "(with 2 or more), n the seeds with a score, failed runs counted apart; **bold**: the "
        "value the final runs were trained at (their `tuned` field), else (no final run yet) "
        "the highest mean, marked *(highest mean)*, which the selection rule may not choose "
        "(`stable` rejects a candidate that failed or collapsed in any seed).",
        "",
    ]
    for block in sorted(groups, key=numeric_key):
        lines += _grid(block, groups[block], finals, tune_overrides)
    return lines


def _grid(
    block: str,
    norms: Mapping[str, Mapping[Candidate, list[Record]]],
    finals: Sequence[Record],
    tune_overrides: Sequence[str],
) -> list[str]:
    """One table's grid of norms × candidates."""
    candidates = sorted({c for by_norm in norms.values() for c in by_norm}, key=_candidate_key)
    rows = []
    for norm in sorted(norms):
        runs = norms[norm]
        chosen = _selected(runs, finals, tune_overrides)
        marked = chosen or _best(runs)
        cells = [_cell_text(runs.get(c, []), c in marked, not chosen) for c in candidates]
        rows.append([code(norm), *cells])
    headers = ["norm", *[_candidate_text(c) or "(no tuned value)" for c in candidates]]
    return [f"Tuning runs at `{block}`:", "", table(rows, headers), ""]


def _candidate(values: Mapping) -> Candidate:
    return tuple(sorted(values.items()))


def _candidate_key(candidate: Candidate) -> tuple:
    """Candidates in numeric order of their values, key by key."""
    return tuple((k, numeric_key(grid_value_text(v))) for k, v in candidate)


def _candidate_text(candidate: Candidate) -> str:
    return ", ".join(f"{k}={grid_value_text(v)}" for k, v in candidate)


def _scores(runs: Sequence[Record]) -> list[float]:
    return [
        float(r["val_acc"]) for r in runs if r["status"] == "ok" and r.get("val_acc") is not None
    ]


def _selected(
    runs: Mapping[Candidate, list[Record]], finals: Sequence[Record], tune_overrides: Sequence[str]
) -> set[Candidate]:
    """The candidates the final runs of these tuning runs' norm and configuration ran at."""
    sample = next(r for group in runs.values() for r in group)
    shared = {k: v for k, v in _overrides(sample).items() if k not in tune_overrides}
    return {
        _candidate(r["tuned"])
        for r in finals
        if r.get("backbone") == sample.get("backbone")
        and r.get("norm") == sample.get("norm")
        and isinstance(r.get("tuned"), Mapping)
        and r["tuned"]
        and all(_overrides(r).get(k, v) == v for k, v in shared.items())
    }


def _overrides(record: Record) -> Mapping:
    overrides = record.get("overrides")
    return overrides if isinstance(overrides, Mapping) else {}


def _best(runs: Mapping[Candidate, list[Record]]) -> set[Candidate]:
    """The candidate with the highest mean score (the first in numeric order on a tie)."""
    means = {c: math.fsum(s) / len(s) for c, group in runs.items() if (s := _scores(group))}
    if not means:
        return set()
    return {max(sorted(means, key=_candidate_key), key=lambda c: means[c])}


def _cell_text(runs: Sequence[Record], selected: bool, by_best: bool) -> str:
    """``37.18 ± 0.52 (n=3)``, with failed runs and the selection marked; — without a run."""
    if not runs:
        return NA
    scores = _scores(runs)
    failed = sum(r["status"] != "ok" for r in runs)
    if scores:
        text = f"{100 * math.fsum(scores) / len(scores):.2f}"
        if len(scores) > 1:
            text += f" ± {100 * statistics.stdev(scores):.2f}"
        text += f" (n={len(scores)})"
    else:
        text = "no score"
    if failed:
        text += f", {failed} failed"
    if selected:
        text = f"**{text}**" + (" *(highest mean)*" if by_best else "")
    return text
