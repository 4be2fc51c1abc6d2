"""The two-stage protocol: tune each (backbone, norm) on a validation split, then final runs.

*Tune*: every backbone x norm x (other grid keys) x tuning value x tuning seed, trained on the
private set minus ``data.val_split`` examples and scored on those (``val_acc``, released as a
noisy count: `bench.train.score`); the test set is not even moved to the device. *Final*: the
grid's seeds at the value with the best mean validation score for that point of the grid,
trained on the whole private set (validation examples included) and reported on the test set.
Both stages are ordinary cells with their own run keys, so both resume like any sweep; a final
cell's run key holds what was selected, because the selected values are part of its config.

Privacy: each run's ``epsilon_spent`` is what that run spent (a tuning run's includes its
score), as in the literature; each final run also records ``epsilon_with_tuning``, the whole
procedure's (every tuning run of its grid point, their scores, the selection, the final run),
by composition (`bench.privacy_tuning`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.config import GRID_SECTIONS, Cell, Suite


def _with(cell: Cell, changes: Mapping[str, Any], **fields: Any) -> Cell:
    """``cell`` with dotted-key changes (``training.lr``) applied to its sections."""
    sections = {s: getattr(cell, s) for s in GRID_SECTIONS}
    for section in GRID_SECTIONS:
        values = {k.partition(".")[2]: v for k, v in changes.items() if k.startswith(section + ".")}
        if values:
            sections[section] = dataclasses.replace(sections[section], **values)
    return dataclasses.replace(cell, **sections, **fields)


def group_of(cell: Cell) -> tuple:
    """The point of the grid a selection is made for: backbone, norm and the other grid keys."""
    return (cell.backbone, cell.norm, tuple(sorted(cell.overrides.items())))


def candidates(suite: Suite) -> list[dict[str, Any]]:
    """Every combination of the tuning values, in the order the suite lists them."""
    keys = [k for k, _ in suite.tune.keys]
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(v for _, v in suite.tune.keys))
    ]


def _tune_cells_per_point(suite: Suite) -> list[Cell]:
    """Each grid point (its seed replaced) x candidate x tuning seed, duplicates kept."""
    seen: set[tuple] = set()
    cells = []
    for cell in suite.cells():
        if group_of(cell) in seen:
            continue
        seen.add(group_of(cell))
        for values in candidates(suite):
            for seed in suite.tune.seeds:
                cells.append(
                    _with(
                        cell,
                        {**dict(suite.tune.overrides), **values},
                        seed=seed,
                        stage="tune",
                        tuned=values,
                        score_noise=suite.tune.score_noise,
                    )
                )
    return cells


def tuning_by_group(suite: Suite) -> dict[tuple, list[Cell]]:
    """Per grid point (`group_of`), every tuning cell its selection reads, shared ones
    included: what the point's ``epsilon_with_tuning`` composes."""
    out: dict[tuple, list[Cell]] = {}
    for cell in _tune_cells_per_point(suite):
        out.setdefault(group_of(cell), []).append(cell)
    return out


def tune_cells(suite: Suite) -> list[Cell]:
    """The tuning stage: each grid point (its seed replaced) x candidate x tuning seed.

    A tuning override may set a key the grid sweeps (``tune.overrides: {training.steps: 40}``
    with ``grid.training.steps: [40, 120]``: every budget tuned at the cheaper one). The grid
    points it makes alike then share their tuning runs: each runs once (as the first point's
    cell, whose record it is), and every point's selection reads it by its run key.
    """
    first: dict[str, Cell] = {}
    for cell in _tune_cells_per_point(suite):
        first.setdefault(cell.run_key, cell)
    return list(first.values())


@dataclass(frozen=True)
class Selection:
    """What the tuning stage chose for one grid point.

    Attributes:
        values: The chosen tuning values (dotted keys).
        val_acc: Their mean validation score over the tuning seeds (each a noisy count over
            the split's size, as published: the selection reads nothing else).
        table: Every candidate's mean validation score (None: no ok tuning run), in order.
        missing: Tuning runs without an ok record (the selection waits for them).
    """

    values: Mapping[str, Any] | None
    val_acc: float | None
    table: tuple[tuple[tuple[tuple[str, Any], ...], float | None, int], ...]
    missing: int

    def as_record(self) -> dict[str, Any]:
        return {"values": dict(self.values or {}), "val_acc": self.val_acc}


def select(suite: Suite, records: Iterable[Mapping[str, Any]]) -> dict[tuple, Selection]:
    """For each grid point, the candidate with the best mean ``val_acc`` over its ok tuning runs
    (the first listed wins a tie). A point with a missing tuning run has no selection yet."""
    by_key = {r["run_key"]: r for r in records}
    cells = _tune_cells_per_point(suite)
    out: dict[tuple, Selection] = {}
    for group in dict.fromkeys(group_of(c) for c in cells):
        rows, missing = [], 0
        for values in candidates(suite):
            accs, finished = [], 0
            for c in cells:
                if group_of(c) != group or dict(c.tuned) != values:
                    continue
                record = by_key.get(c.run_key)
                if record is None or record.get("status") == "interrupted":
                    missing += 1
                    continue
                finished += 1
                acc = record.get("val_acc")
                if record.get("status") == "ok" and isinstance(acc, (int, float)):
                    accs.append(float(acc))
            mean = math.fsum(accs) / len(accs) if accs else None
            rows.append((tuple(values.items()), mean, finished))
        scored = [r for r in rows if r[1] is not None]
        best = max(scored, key=lambda r: r[1]) if scored and not missing else None
        out[group] = Selection(
            values=dict(best[0]) if best else None,
            val_acc=best[1] if best else None,
            table=tuple(rows),
            missing=missing,
        )
    return out


def final_cells(
    suite: Suite,
    selections: Mapping[tuple, Selection],
    tuning_costs: Mapping[tuple, tuple] | None = None,
) -> list[Cell]:
    """The final stage: the grid's cells at their point's selected values. Points whose
    selection is not made yet (missing tuning runs, or none ok) are left out.

    Args:
        tuning_costs: Per grid point, the composed history of its tuning runs
            (`bench.privacy_tuning.group_costs`), which each final cell carries to compose
            into its ``epsilon_with_tuning``; None: not computed (the record's is null).
    """
    cells = []
    for cell in suite.cells():
        chosen = selections.get(group_of(cell))
        if chosen is None or chosen.values is None:
            continue
        cost = None if tuning_costs is None else tuning_costs[group_of(cell)]
        cells.append(
            _with(
                cell,
                chosen.values,
                stage="final",
                tuned=dict(chosen.values),
                tuning_history=cost,
            )
        )
    return cells


def expected_final_cells(suite: Suite, selections: Mapping[tuple, Selection]) -> list[Cell]:
    """One final cell per grid cell, as the sweep will run them: at the point's selection, or,
    where none is made yet, at the first candidate (a stand-in, for sizing the sweep)."""
    first = candidates(suite)[0]
    cells = []
    for cell in suite.cells():
        chosen = selections.get(group_of(cell))
        values = chosen.values if chosen is not None and chosen.values is not None else first
        cells.append(_with(cell, values, stage="final", tuned=dict(values)))
    return cells


def final_candidates(suite: Suite) -> list[Cell]:
    """Every final cell the selection could produce, for the preflight (each candidate value's
    privacy calibration is checked before the first tuning run)."""
    return [
        _with(cell, values, stage="final", tuned=values)
        for cell in suite.cells()
        for values in candidates(suite)
    ]


def selection_lines(selections: Mapping[tuple, Selection]) -> Sequence[str]:
    """One line per grid point for the sweep's output."""
    lines = []
    for (backbone, norm, extra), sel in selections.items():
        where = f"{backbone} {norm}" + (f" {dict(extra)}" if extra else "")
        if sel.values is None:
            lines.append(f"{where}: no selection ({sel.missing} tuning run(s) not finished)")
        else:
            lines.append(f"{where}: selected {sel.values} (val acc {sel.val_acc:.4f})")
    return lines


def planned_cells(suite: Suite) -> list[Cell]:
    """Every cell a sweep of ``suite`` may run, for checks before the first one: the grid's; with
    a ``tune`` section, the tuning stage, then every final cell a selection can make."""
    if suite.tune is None:
        return suite.cells()
    return [*tune_cells(suite), *final_candidates(suite)]
