"""Which cells a sweep still has to run, from the newest record of each run key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.config import Cell
from bench.results.record import FINAL_STATUSES
from bench.results.records import read_records


def newest_statuses(records: Path) -> dict[str, str]:
    """The status of each run key's newest record; empty when the file does not exist."""
    if not records.exists():
        return {}
    return {r["run_key"]: r["status"] for r in read_records(records).records}


def pending_cells(
    cells: Sequence[Cell], records: Path, force: bool, retry_failed: bool = False
) -> tuple[list[Cell], int]:
    """The cells to run now, and how many of ``cells`` already have a final record.

    A cell runs when it has no record, when its newest record is ``interrupted``, with
    ``retry_failed`` when it is ``failed``, and always with ``force``. The records file is read
    once, whatever the number of cells.
    """
    newest = newest_statuses(records)
    rerun = {"failed"} if retry_failed else set()
    done = {k for k, s in newest.items() if s in FINAL_STATUSES and s not in rerun}
    already = sum(newest.get(c.run_key) in FINAL_STATUSES for c in cells)
    return (list(cells) if force else [c for c in cells if c.run_key not in done]), already


def without_final_record(cells: Sequence[Cell], records: Path) -> list[Cell]:
    """The cells whose newest record is not one they ended on their own (none, or interrupted)."""
    newest = newest_statuses(records)
    return [c for c in cells if newest.get(c.run_key) not in FINAL_STATUSES]


def record_count(records: Path, run_key: str) -> int:
    """How many records ``run_key`` has in ``records`` (0 when the file does not exist)."""
    if not records.exists():
        return 0
    return sum(r["run_key"] == run_key for r in read_records(records).records)


def record_counts(records: Path) -> dict[str, int]:
    """How many records each run key has in ``records`` (empty when the file does not exist)."""
    counts: dict[str, int] = {}
    if records.exists():
        for r in read_records(records).records:
            counts[r["run_key"]] = counts.get(r["run_key"], 0) + 1
    return counts
