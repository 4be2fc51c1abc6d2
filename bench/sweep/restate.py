"""A recorded final run's ``epsilon_with_tuning`` brought up to date with its grid point's
tuning runs.

A final run's record composes the tuning runs its grid point had when it ran
(`bench.privacy_tuning`). A tuning run that finishes later trained on the same private set and
is part of the procedure the final run's result comes out of: ``--retry-failed`` on a failed
tuning run whose retry leaves the selection where it was (the final cell is then the recorded
one, and is not run again), or a ``--force`` re-run of a tuning cell. The record's figure then
understates the procedure's epsilon. At every tuned sweep's final stage, each recorded final
run whose composed history does not cover the procedure as the records now give it has its
``epsilon_with_tuning`` fields recomputed in place (`bench.results.records.revise_record`), and
what they held is kept in the record's ``epsilon_with_tuning_revisions``, with when and why.

Only an understatement is revised: a record whose history holds every run the procedure now
has (more is possible: a run it composed whose record was since lost), or whose figure is not
below the recomputed one, keeps its figure. A
record made before ``epsilon_with_tuning`` existed has none to revise; the leaderboard says its
epsilon excludes the tuning stage.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.config import Cell
from bench.privacy_tuning import composed
from bench.results.record import Record
from bench.results.records import read_records, revise_record
from bench.train.record import with_tuning_fields

if TYPE_CHECKING:
    from bench.privacy import History

#: Why a record's figure was revised, as its ``epsilon_with_tuning_revisions`` entry says.
WHY = (
    "tuning runs of its grid point finished after this run was recorded (a retried or forced "
    "tuning run): the procedure's epsilon composes them too"
)


def taken_history(record: Mapping[str, Any]) -> History:
    """What a final run spent, from its record: its charges, then the DP-SGD steps the
    accountant saw at the run's noise and sampling rate."""
    charges = [
        (float(c["noise_multiplier"]), float(c["sample_rate"]), int(c["steps"]))
        for c in record.get("privacy_charges") or []
    ]
    steps = (
        float(record["noise_multiplier"]),
        float(record["sample_rate"]),
        int(record["steps_done"]),
    )
    return [*charges, steps]


def understates(stored: Sequence[Sequence[float]], procedure: History) -> bool:
    """Whether a composed history (``stored``: a record's ``epsilon_with_tuning_history``)
    holds fewer steps than ``procedure`` at some ``(sigma, q)``; entries match to a relative
    1e-9, which a float's trip through JSON keeps."""
    have = [(float(s), float(q), int(n)) for s, q, n in stored]

    def count(sigma: float, q: float) -> int:
        return sum(
            n
            for s, r, n in have
            if math.isclose(s, sigma, rel_tol=1e-9) and math.isclose(r, q, rel_tol=1e-9)
        )

    return any(n > count(float(s), float(q)) for s, q, n in procedure)


def restate(records: Path, finals: Sequence[Cell]) -> int:
    """Revise the recorded ``ok`` final runs among ``finals`` whose ``epsilon_with_tuning``
    understates their procedure; each cell's ``tuning_history`` is its grid point's as the
    records now give it, with any earlier attempt of the cell composed (`bench.sweep.run`).
    Returns how many records were revised, and says so on stderr."""
    if not records.exists():
        return 0
    by_key = {c.run_key: c for c in finals if c.tuning_history is not None}
    revised = 0
    for record in read_records(records).records:
        cell = by_key.get(record["run_key"])
        if cell is not None and _stale(record, cell.tuning_history) is not None:
            revised += revise_record(
                records, record["run_key"], lambda r, h=cell.tuning_history: _stale(r, h)
            )
    if revised:
        print(
            f"epsilon with tuning: revised {revised} recorded final run(s) whose grid point's "
            "tuning runs finished after them (their records keep the earlier figure)",
            file=sys.stderr,
        )
    return revised


def _stale(record: Record, tuning: History) -> dict[str, Any] | None:
    """The revised fields of a record whose figure understates ``tuning`` composed with its
    own run, or None when it does not (or is not a final run's ``ok`` record with a figure)."""
    stored = record.get("epsilon_with_tuning_history")
    if record.get("status") != "ok" or not stored or record.get("stage") == "tune":
        return None
    taken = taken_history(record)
    if not understates(stored, composed([tuning, taken])):
        return None
    accountant = record.get("accountant") or record["epsilon_with_tuning_accountant"]
    fields = with_tuning_fields(tuning, taken, float(record["delta"]), accountant)
    stated = record.get("epsilon_with_tuning")
    if isinstance(stated, (int, float)) and fields["epsilon_with_tuning"] <= stated:
        return None  # the histories differ (e.g. a recalibrated sigma), the figure does not lag
    before = {k: record.get(k) for k in fields}
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    earlier = list(record.get("epsilon_with_tuning_revisions") or [])
    return {
        **fields,
        "epsilon_with_tuning_revisions": [*earlier, {**before, "revised": when, "why": WHY}],
    }
