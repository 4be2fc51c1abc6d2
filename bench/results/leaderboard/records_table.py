"""The leaderboard's last section: every record with its run key, so that each run the report
counts can be found in ``records.jsonl``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.results.leaderboard.collect import is_tuning, seed_key
from bench.results.leaderboard.markdown import NA, cell_text, code, optional_text, table
from bench.results.leaderboard.order import numeric_key
from bench.results.record import Record, grid_value_text


def records_section(records: Sequence[Record]) -> list[str]:
    """Every record, final runs first, then by backbone, grid values (numeric order), norm,
    seed and run key, in a collapsed block; empty when there is none."""
    if not records:
        return []
    rows = [_row(r) for r in sorted(records, key=_order)]
    headers = [
        "run key",
        "stage",
        "backbone",
        "grid values",
        "norm",
        "seed",
        "status",
        "accuracy % (final: test, tune: val)",
        "ε spent",
    ]
    return [
        "## Records",
        "",
        f"<details><summary>All {len(records)} records, by run key (the `run_key` field of "
        "records.jsonl)</summary>",
        "",
        table(rows, headers),
        "",
        "</details>",
        "",
    ]


def _grid_text(record: Record) -> str:
    """The record's swept grid values, and for a tuning run the candidate it tried."""
    overrides = record.get("overrides") if isinstance(record.get("overrides"), Mapping) else {}
    parts = [f"{k}={grid_value_text(v)}" for k, v in sorted(overrides.items())]
    tuned = record.get("tuned") if isinstance(record.get("tuned"), Mapping) else {}
    if is_tuning(record):
        parts += [f"{k}={grid_value_text(v)}" for k, v in sorted(tuned.items())]
    return ", ".join(parts) or NA


def _accuracy(record: Record) -> float | None:
    value = record.get("val_acc") if is_tuning(record) else record.get("test_acc")
    return None if not isinstance(value, (int, float)) else 100 * value


def _row(record: Record) -> list[str]:
    seed = record.get("seed")
    return [
        f"`{cell_text(record.get('run_key'))}`",
        "tune" if is_tuning(record) else "final",
        code(record.get("backbone")),
        cell_text(_grid_text(record)),
        code(record.get("norm")),
        NA if seed is None else cell_text(seed),
        cell_text(record.get("status")),
        optional_text(_accuracy(record), ".2f"),
        optional_text(record.get("epsilon_spent"), ".2f"),
    ]


def _order(record: Record) -> tuple:
    return (
        is_tuning(record),
        str(record.get("backbone")),
        numeric_key(_grid_text(record)),
        str(record.get("norm")),
        seed_key(record.get("seed")),
        str(record.get("run_key")),
    )
