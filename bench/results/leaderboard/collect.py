"""Records sorted once per report into the leaderboard's tables and cells, for every section."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.results.record import Record, grid_value_text

#: ok records by table (backbone plus swept keys, as the leaderboard names it), norm and seed.
OkRuns = Mapping[str, Mapping[str, Mapping[object, Record]]]

#: What a TAN simulation's table name ends with (``dp_valid: false``): it never shares a table,
#: a sweep or a figure with DP runs.
TAN_MARK = " [TAN simulation, not DP]"


@dataclass
class Cell:
    """The records of one (table, norm) pair, as the tables need them."""

    ok: dict[object, Record] = field(default_factory=dict)  # seed -> ok record
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    invalid: int = 0  # ok records whose test_acc cannot be used
    failed_records: list[Record] = field(default_factory=list)

    @property
    def accuracy(self) -> dict[object, float]:
        """Test accuracy per seed of the usable ok runs."""
        return {seed: float(record["test_acc"]) for seed, record in self.ok.items()}


@dataclass
class Collected:
    """A report's records sorted into cells, with everything the header and the lists need.

    Attributes:
        records: Every record, tuning runs included.
        tuning: The tuning-stage records, kept out of the tables.
        cells: Final-stage records by table and norm.
        not_ok: Final-stage records whose status is not ok.
        problems: Why some records were left out of the tables.
    """

    records: list[Record] = field(default_factory=list)
    tuning: list[Record] = field(default_factory=list)
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)  # table -> norm -> cell
    not_ok: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def ok_runs(self) -> dict[str, dict[str, dict[object, Record]]]:
        """The usable ok records by table, norm and seed, for the sections across swept values."""
        return {
            block: {norm: dict(cell.ok) for norm, cell in norms.items() if cell.ok}
            for block, norms in self.cells.items()
        }


def seed_key(seed: object) -> tuple:
    """Sort key that orders integer seeds numerically and anything else after them, as text."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, "" if seed is None else str(seed))


def block_of(entry: Mapping) -> object:
    """The table a record or planned cell belongs to: its backbone, plus the suite's extra grid
    keys when it swept any (``resnet9 [training.lr=0.5]``), so each swept configuration gets
    its own leaderboard instead of colliding with the others on (backbone, norm, seed)."""
    backbone, overrides = entry.get("backbone"), entry.get("overrides")
    # A TAN simulation is not private at the target: it never shares a table with DP runs.
    tan = TAN_MARK if entry.get("dp_valid") is False else ""
    if not isinstance(backbone, str) or not isinstance(overrides, Mapping) or not overrides:
        return f"{backbone}{tan}" if tan and isinstance(backbone, str) else backbone
    shown = ", ".join(f"{k}={grid_value_text(v)}" for k, v in sorted(overrides.items()))
    return f"{backbone} [{shown}]{tan}"


def is_simulated(block: object) -> bool:
    """Whether a table (`block_of`) holds TAN simulations, not DP runs."""
    return isinstance(block, str) and block.endswith(TAN_MARK)


def split_simulated(ok: OkRuns) -> tuple[OkRuns, OkRuns]:
    """The ok runs of the DP tables and those of the TAN simulations' tables, apart."""
    dp = {block: runs for block, runs in ok.items() if not is_simulated(block)}
    return dp, {block: runs for block, runs in ok.items() if is_simulated(block)}


def is_tuning(entry: Mapping) -> bool:
    """A tuning-stage run: scored on the validation split, kept out of the leaderboard."""
    return entry.get("stage") == "tune"


def collect(records: Sequence[Record]) -> Collected:
    """Sort records into (table, norm) cells, noting records the tables cannot use.

    Numeric fields are finite numbers or None here: :func:`read_records` refused the rest.
    """
    out = Collected(records=list(records), tuning=[r for r in records if is_tuning(r)])
    for record in records:
        if not is_tuning(record):
            _add(out, record)
    return out


def _add(out: Collected, record: Record) -> None:
    """File one final-stage record into its cell, or note why it cannot be."""
    key = record["run_key"]
    backbone, norm = block_of(record), record.get("norm")
    if not isinstance(backbone, str) or not isinstance(norm, str):
        out.problems.append(f"run {key}: no backbone/norm spec string; left out of the tables")
        return
    cell = out.cells.setdefault(backbone, {}).setdefault(norm, Cell())
    if record["status"] != "ok":
        out.not_ok.append(record)
        if record["status"] == "failed":
            cell.failed += 1
            cell.failed_records.append(record)
        elif record["status"] == "interrupted":
            cell.interrupted += 1
        else:
            cell.skipped += 1
        return
    acc = record.get("test_acc")
    if acc is None or not 0.0 <= acc <= 1.0:
        out.problems.append(
            f"run {key}: status ok but test_acc is {record.get('test_acc')!r} "
            "(need a fraction in [0, 1]); left out of the tables"
        )
        cell.invalid += 1
        return
    seed = record.get("seed")
    if seed in cell.ok:
        # Two configurations with one (backbone, grid keys, norm, seed), e.g. records of an
        # edited suite: keep the newer and say so rather than average them.
        out.problems.append(
            f"runs {cell.ok[seed]['run_key']} and {key}: both ok for {backbone} / {norm} / "
            f"seed {seed}; using the later one ({key})"
        )
    cell.ok[seed] = record


def planned_cells(suite: Mapping) -> list[dict]:
    """The grid cells listed in suite.json that are well-formed enough to report."""
    cells = suite.get("cells")
    if not isinstance(cells, list):
        return []
    return [c for c in cells if isinstance(c, Mapping) and isinstance(c.get("run_key"), str)]


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values present, or None when there are none."""
    present = [v for v in values if v is not None]
    # fsum is exactly rounded, so the mean does not depend on the order of the records.
    return math.fsum(present) / len(present) if present else None


def measurements(cell: Cell) -> dict[str, float | None]:
    """Throughput, DP/non-DP ratio, peak memory and epsilon spent of a cell's ok runs."""
    ratios = []
    for record in cell.ok.values():
        dp, plain = record.get("throughput_img_s"), record.get("nonprivate_throughput_img_s")
        ratios.append(dp / plain if dp is not None and plain else None)
    memory = [r.get("peak_mem_bytes") for r in cell.ok.values()]
    epsilon = [r.get("epsilon_spent") for r in cell.ok.values()]
    over = [
        r["epsilon_target"]
        for r, spent in zip(cell.ok.values(), epsilon, strict=True)
        if spent is not None
        and r.get("epsilon_target") is not None
        # Relative slack: accountants report epsilon through a numerical search.
        and spent > r["epsilon_target"] * (1 + 1e-6)
    ]
    return {
        "throughput": mean(r.get("throughput_img_s") for r in cell.ok.values()),
        "ratio": mean(ratios),
        "memory": max((m for m in memory if m is not None), default=None),
        "epsilon": max((e for e in epsilon if e is not None), default=None),
        "epsilon_target_exceeded": min(over) if over else None,
    }
