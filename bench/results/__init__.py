"""Results, torch-free: the typed record, the records file, statistics, leaderboard and figures."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.results.leaderboard import leaderboard_text, render_leaderboard, write_report
    from bench.results.record import (
        NUMERIC_FIELDS,
        REQUIRED_FIELDS,
        STATUSES,
        Record,
        check_record,
    )
    from bench.results.records import RecordsRead, append_record, finished_keys, read_records

# Public name -> defining module. Resolved on first use (PEP 562), so that the runner, which
# only appends records, does not pay for importing scipy and tabulate with the report.
_EXPORTS = {
    "NUMERIC_FIELDS": "bench.results.record",
    "REQUIRED_FIELDS": "bench.results.record",
    "STATUSES": "bench.results.record",
    "Record": "bench.results.record",
    "check_record": "bench.results.record",
    "RecordsRead": "bench.results.records",
    "append_record": "bench.results.records",
    "finished_keys": "bench.results.records",
    "read_records": "bench.results.records",
    "leaderboard_text": "bench.results.leaderboard",
    "render_leaderboard": "bench.results.leaderboard",
    "write_report": "bench.results.leaderboard",
}

__all__ = [
    "NUMERIC_FIELDS",
    "REQUIRED_FIELDS",
    "STATUSES",
    "Record",
    "RecordsRead",
    "append_record",
    "check_record",
    "finished_keys",
    "leaderboard_text",
    "read_records",
    "render_leaderboard",
    "write_report",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
