"""A table's columns that hold no value in any row, left out with a note saying why."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from bench.results.leaderboard.markdown import NA, cell_text, distinct
from bench.results.record import Record

#: The measurement columns a CPU run leaves empty, whose note says why from the records.
MEMORY_HEADER = "peak memory (MiB)"
RATIO_HEADER = "DP/non-DP throughput"


def drop_empty(
    headers: Sequence[str], rows: Sequence[Sequence[str]], keep: int
) -> tuple[list[str], list[list[str]], list[str]]:
    """The headers and rows without the columns that are ``—`` in every row.

    Args:
        headers: Column names.
        rows: Table cells, one list per row, as long as ``headers``.
        keep: The first ``keep`` columns (the row's names) stay even when empty.

    Returns:
        The kept headers, the kept rows and the dropped headers, in table order.
    """
    empty = [
        i >= keep and bool(rows) and all(row[i] == NA for row in rows) for i in range(len(headers))
    ]
    kept_headers = [h for h, e in zip(headers, empty, strict=True) if not e]
    kept_rows = [[c for c, e in zip(row, empty, strict=True) if not e] for row in rows]
    dropped = [h for h, e in zip(headers, empty, strict=True) if e]
    return kept_headers, kept_rows, dropped


def dropped_note(dropped: Sequence[str], records: Iterable[Record]) -> list[str]:
    """One line naming the dropped columns and why each is empty, from the records' own words
    (``memory_measure``, the config's ``training.measure_nonprivate``); empty when none was."""
    if not dropped:
        return []
    records = list(records)
    reasons = [f"{name}: {_reason(name, records)}" for name in dropped]
    return [f"Columns left out, empty in every row: {'; '.join(reasons)}.", ""]


def _reason(header: str, records: Sequence[Record]) -> str:
    """Why a column has no value: what the records say about that measurement."""
    if header == MEMORY_HEADER:
        measures = distinct(r.get("memory_measure") for r in records)
        return (
            "not measured (`memory_measure`: " + cell_text(" / ".join(measures)) + ")"
            if measures
            else "no run recorded `peak_mem_bytes`"
        )
    if header == RATIO_HEADER:
        flags = distinct(_measure_nonprivate(r) for r in records)
        if flags == ["False"]:
            return "no non-private reference was timed (`training.measure_nonprivate: false`)"
        return "no run recorded `nonprivate_throughput_img_s`"
    return "no row has a value"


def _measure_nonprivate(record: Record) -> object:
    """The run's ``training.measure_nonprivate`` from its config, or None."""
    config = record.get("config")
    training = config.get("training") if isinstance(config, Mapping) else None
    return training.get("measure_nonprivate") if isinstance(training, Mapping) else None
