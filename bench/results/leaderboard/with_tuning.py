"""What a tuned suite's epsilon covers: the header's line and the tuning section's statement
and table of ``epsilon_with_tuning`` (`bench.privacy_tuning`), from the records alone.

A final record of a tuned suite made before ``epsilon_with_tuning`` existed lacks the field;
its epsilon is the final run's alone, and the report says so rather than claim a number. A
tuning record without ``val_score_noise`` published its validation accuracy exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.privacy_tuning import METHOD, METHOD_TEXT
from bench.results.leaderboard.collect import block_of, is_tuning
from bench.results.leaderboard.markdown import code, distinct, join, number_text, table
from bench.results.record import Record

#: The method names records may hold, in the words the report uses.
_METHODS = {METHOD: METHOD_TEXT}


def is_tuned(records: Sequence[Record], suite: Mapping) -> bool:
    """A suite with a tuning stage (its ``suite.json`` says so, or tuning records exist)."""
    return bool(suite.get("tune")) or any(is_tuning(r) for r in records)


def _finals(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if not is_tuning(r) and r.get("status") == "ok"]


def _range_text(values: Sequence[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"


def header_lines(records: Sequence[Record], suite: Mapping) -> list[str]:
    """The header's line on the whole procedure's ε; none for an untuned suite."""
    if not is_tuned(records, suite):
        return []
    return [f"- **ε with tuning:** {_statement(records)}"]


def _statement(records: Sequence[Record]) -> str:
    """What the final runs' ε covers, and the whole procedure's where the records give it
    (DP runs only: a TAN simulation's ε is in the table, under its own heading)."""
    finals = [r for r in _finals(records) if r.get("dp_valid") is not False]
    n_tuning = sum(is_tuning(r) for r in records)
    predate = [r for r in finals if "epsilon_with_tuning" not in r]
    values = [float(r["epsilon_with_tuning"]) for r in finals if _number(r)]
    parts = []
    if values:
        computed = [r for r in finals if _number(r)]
        accountants = distinct(r.get("epsilon_with_tuning_accountant") for r in computed)
        methods = distinct(r.get("epsilon_with_tuning_method") for r in computed)
        delta = join([number_text(float(d)) for d in distinct(r.get("delta") for r in finals)])
        parts.append(
            f"ε = {_range_text(values)} at δ = {delta} for the whole procedure (tuning runs, "
            f"their noisy validation scores, the selection and one final run, with any "
            f"earlier attempt of a run that a re-run replaced), by "
            f"{join([_METHODS.get(m, m) for m in methods])} ({join(accountants)}); the "
            "tables' ε is the final run's alone"
        )
    revised = [r for r in finals if r.get("epsilon_with_tuning_revisions")]
    if revised:
        parts.append(
            f"recomputed for {len(revised)} final run(s) after tuning runs of their grid point "
            "finished later (a retried or forced tuning run), each record keeping its earlier "
            "figure in `epsilon_with_tuning_revisions`"
        )
    if predate:
        parts.append(
            f"not computed for {len(predate)} final run(s), whose records predate "
            "`epsilon_with_tuning`: their ε covers the final run alone and **excludes the "
            f"tuning stage** ({n_tuning} tuning runs on the same private set)"
        )
    return "; ".join(parts) or "no final run recorded yet"


def _number(record: Record) -> bool:
    value = record.get("epsilon_with_tuning")
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def tuning_privacy_lines(records: Sequence[Record]) -> list[str]:
    """The tuning section's statement of what its scores reveal and what ε covers, and the
    per-grid-point table of the final runs' ε beside the whole procedure's."""
    tuning = [r for r in records if is_tuning(r) and r.get("status") == "ok"]
    exact = [r for r in tuning if "val_score_noise" not in r]
    noised = distinct(r.get("val_score_noise") for r in tuning if "val_score_noise" in r)
    lines = []
    if noised:
        lines.append(
            "Each tuning run's validation accuracy leaves the run as a noisy count: Gaussian "
            f"noise of std {join(noised)} examples (`tune.score_noise`) on its number of "
            "correct validation examples, charged in that run's ε; the table shows those "
            "noisy values, and the selection reads nothing else."
        )
    if exact:
        lines.append(
            f"{len(exact)} tuning record(s) predate noisy scores: their validation accuracies "
            "below are exact counts over the validation split, which the final runs train on, "
            "an un-noised release about those examples."
        )
    lines.append(f"**ε with tuning:** {_statement(records)}.")
    return [" ".join(lines), "", *_epsilon_table(_finals(records))]


def _epsilon_table(finals: Sequence[Record]) -> list[str]:
    """Per table and norm: the final runs' ε and the whole procedure's (ranges over seeds)."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in finals:
        groups.setdefault((str(block_of(r)), str(r.get("norm"))), []).append(r)
    rows = []
    for (block, norm), rs in sorted(groups.items()):
        spent = [float(r["epsilon_spent"]) for r in rs if r.get("epsilon_spent") is not None]
        with_tuning = [float(r["epsilon_with_tuning"]) for r in rs if _number(r)]
        rows.append(
            [
                code(block),
                code(norm),
                _range_text(spent) if spent else "—",
                _range_text(with_tuning) if with_tuning else "not computed (excludes tuning)",
            ]
        )
    if not rows or all(r[3].startswith("not computed") for r in rows):
        return []
    return [table(rows, ["backbone", "norm", "ε final run", "ε with tuning"]), ""]
