"""The two-stage protocol: tune each (backbone, norm) on a validation split, then final runs.

*Tune*: every backbone x norm x (other grid keys) x tuning value x tuning seed, trained on the
private set minus ``data.val_split`` examples and scored on those (``val_acc``, released as a
noisy count: `bench.train.score`); the test set is not even moved to the device. With
``tune.refine`` a second round then tries the geometric midpoints around each point's coarse
optimum. *Final*: the grid's seeds at the value the rule selects for that point of the grid
(``stable``: the best mean validation score among candidates that failed in no tuning seed),
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
from bench.results.records import run_identity


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
    """Every combination of the coarse tuning values, in the order the suite lists them."""
    keys = [k for k, _ in suite.tune.keys]
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(v for _, v in suite.tune.keys))
    ]


def _round(value: float) -> float:
    """Four significant digits: a refined value readable in a run key and a table (1.414)."""
    return float(f"{value:.4g}")


def refined_values(values: Sequence[Any], best: Any) -> list[float]:
    """The refinement of one tuning key around its coarse optimum ``best``: the geometric
    midpoints between ``best`` and its neighbours among ``values`` (sqrt(a b)), and, where
    ``best`` sits at an end of the grid, one such half-step beyond it (so that an optimum at the
    edge is tested from both sides). Empty unless every value is a positive float (a learning
    rate; not an integer count), with at least two values."""
    if len(values) < 2 or any(not isinstance(v, float) or v <= 0 for v in values):
        return []
    grid = sorted(set(values))
    i = grid.index(best)
    last = len(grid) - 1
    low = math.sqrt(grid[i - 1] * best) if i > 0 else best / math.sqrt(grid[1] / grid[0])
    high = math.sqrt(best * grid[i + 1]) if i < last else best * math.sqrt(grid[-1] / grid[-2])
    return [v for v in (_round(low), _round(high)) if v not in grid]


def refined_candidates(suite: Suite, best: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The candidates a grid point adds once its coarse optimum ``best`` is known: each
    refinable key moved to its refined values, the other keys kept at the optimum."""
    if not suite.tune.refine:
        return []
    return [
        {**best, key: value}
        for key, values in suite.tune.keys
        for value in refined_values(values, best[key])
    ]


def _points(suite: Suite) -> list[Cell]:
    """One cell per grid point (`group_of`): the first of the grid's cells there."""
    first: dict[tuple, Cell] = {}
    for cell in suite.cells():
        first.setdefault(group_of(cell), cell)
    return list(first.values())


def _tuning(suite: Suite, point: Cell, values: Mapping[str, Any]) -> list[Cell]:
    """The tuning cells of one candidate at one grid point: one per tuning seed."""
    return [
        _with(
            point,
            {**dict(suite.tune.overrides), **values},
            seed=seed,
            stage="tune",
            tuned=dict(values),
            score_noise=suite.tune.score_noise,
        )
        for seed in suite.tune.seeds
    ]


def _coarse_by_group(suite: Suite) -> dict[tuple, list[Cell]]:
    """Per grid point, its coarse tuning cells (candidate x tuning seed)."""
    return {
        group_of(point): [c for values in candidates(suite) for c in _tuning(suite, point, values)]
        for point in _points(suite)
    }


def _refined_by_group(suite: Suite, coarse: Mapping[tuple, Selection]) -> dict[tuple, list[Cell]]:
    """Per grid point whose coarse selection is made, its refinement's tuning cells."""
    out = {}
    for point in _points(suite):
        chosen = coarse.get(group_of(point))
        if chosen is not None and chosen.values is not None:
            out[group_of(point)] = [
                c
                for values in refined_candidates(suite, chosen.values)
                for c in _tuning(suite, point, values)
            ]
    return out


def _unique(cells: Iterable[Cell]) -> list[Cell]:
    """``cells`` with one cell per run key, the first kept.

    A tuning override may set a key the grid sweeps (``tune.overrides: {training.steps: 40}``
    with ``grid.training.steps: [40, 120]``: every budget tuned at the cheaper one). The grid
    points it makes alike then share their tuning runs: each runs once (as the first point's
    cell, whose record it is), and every point's selection reads it by its run key.
    """
    first: dict[str, Cell] = {}
    for cell in cells:
        first.setdefault(cell.run_key, cell)
    return list(first.values())


def tune_cells(suite: Suite) -> list[Cell]:
    """The coarse tuning stage: each grid point x coarse candidate x tuning seed."""
    return _unique(c for cells in _coarse_by_group(suite).values() for c in cells)


def refine_cells(suite: Suite, coarse: Mapping[tuple, Selection]) -> list[Cell]:
    """The refinement stage, once the coarse records are in (``coarse``: `select_coarse`):
    each grid point with a coarse optimum x refined candidate x tuning seed."""
    return _unique(c for cells in _refined_by_group(suite, coarse).values() for c in cells)


def _read_by_group(suite: Suite, records: Sequence[Mapping[str, Any]]) -> dict[tuple, list[Cell]]:
    """Per grid point (`group_of`), every tuning cell its selection reads, shared ones
    included: the coarse candidates' and, where ``records`` make the coarse optimum known,
    the refinement's around it."""
    out = _coarse_by_group(suite)
    for group, cells in _refined_by_group(suite, select_coarse(suite, records)).items():
        out[group] = [*out[group], *cells]
    return out


def tuning_by_group(
    suite: Suite,
    records: Iterable[Mapping[str, Any]],
    superseded: Iterable[Mapping[str, Any]] = (),
) -> dict[tuple, list[Cell]]:
    """Per grid point (`group_of`), every tuning run the point's ``epsilon_with_tuning``
    composes, as its cell (a cell that trained twice is listed twice): those its selection
    reads (`select`), every other refinement cell of the point that has a record, and every
    finished run a re-run replaced.

    The second kind is a refinement around an earlier coarse optimum, left behind when a
    coarse run recorded later (``--retry-failed``) moved the optimum: the selection no longer
    reads it, but it trained on the private set, its score is published with the others, and
    which values it tried came from the coarse scores the selection still reads; so it is
    charged. ``records`` is required: without them the refinement is not known, and a
    composition of the coarse runs alone would under-state the procedure's epsilon.

    The third kind is a tuning run that finished (``ok`` or ``failed``) and was then replaced
    by ``--force`` or ``--retry-failed`` (``superseded``: the records of
    `bench.results.records.superseded_path`; or a second record of one run key in
    ``records``). It trained on the private set, its score or its failure is published in the
    audit trail and decided that the run was repeated, so it is charged again: a failed run
    retried until it succeeds is not free. An ``interrupted`` record is not a run of its own
    (its run resumed from a checkpoint and finished as the record that replaced it).
    """
    records = list(records)
    recorded = {r["run_key"] for r in records}
    out = _read_by_group(suite, records)
    for point in _points(suite):
        cells = out[group_of(point)]
        have = {c.run_key for c in cells}
        for values in _every_candidate(suite):
            for c in _tuning(suite, point, values):
                if c.run_key in recorded and c.run_key not in have:
                    cells.append(c)
                    have.add(c.run_key)
    runs = finished_runs([*records, *superseded])
    for group, cells in out.items():
        out[group] = [c for c in cells for _ in range(max(1, runs.get(c.run_key, 0)))]
    return out


def finished_runs(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Per run key, how many distinct finished records (``ok`` or ``failed``) there are: one
    per training that ran to its end. A record left in both the records file and the
    superseded file by a kill between their writes is one run (`bench.results.records`), its
    ``epsilon_with_tuning`` revised or not (`run_identity`)."""
    seen: dict[str, set[str]] = {}
    for r in records:
        if r.get("status") in ("ok", "failed"):
            seen.setdefault(r["run_key"], set()).add(run_identity(r))
    return {key: len(lines) for key, lines in seen.items()}


@dataclass(frozen=True)
class Candidate:
    """One candidate's tuning runs at one grid point.

    Attributes:
        values: The candidate's tuning values (dotted keys).
        mean: Mean validation score over its ok runs, collapsed ones included (None: none).
        scores: Those scores, in tuning-seed order.
        failures: Runs that failed, or ended ok within ``report.collapse_pp`` of chance.
    """

    values: Mapping[str, Any]
    mean: float | None
    scores: tuple[float, ...]
    failures: int


@dataclass(frozen=True)
class Selection:
    """What the tuning stage chose for one grid point.

    Attributes:
        values: The chosen tuning values (dotted keys); None while runs are missing or when
            no candidate has an ok run.
        val_acc: Their mean validation score over the tuning seeds (each a noisy count over
            the split's size, as published: the selection reads nothing else).
        table: Every candidate tried, in order (coarse, then refined).
        missing: Tuning runs without a final record (the selection waits for them).
        rule: The rule that chose (`bench.config.TUNE_RULES`); ``stable, fallback`` when
            every candidate failed somewhere and the fewest failures decided.
    """

    values: Mapping[str, Any] | None
    val_acc: float | None
    table: tuple[Candidate, ...]
    missing: int
    rule: str = "stable"


def _failed(record: Mapping[str, Any], collapse: float) -> bool:
    """A tuning run that delivered no model: failed, or ok within ``collapse`` of chance."""
    if record.get("status") != "ok":
        return True
    acc, classes = record.get("val_acc"), record.get("num_classes")
    if not isinstance(acc, (int, float)):
        return True
    return isinstance(classes, int) and classes > 0 and acc <= 1.0 / classes + collapse


def _candidate(
    values: Mapping[str, Any], cells: Sequence[Cell], by_key: Mapping, collapse: float
) -> tuple[Candidate, int]:
    """One candidate's runs among ``cells`` (those at ``values``) and how many are missing."""
    scores, failures, missing = [], 0, 0
    for c in cells:
        if dict(c.tuned) != dict(values):
            continue
        record = by_key.get(c.run_key)
        if record is None or record.get("status") == "interrupted":
            missing += 1
            continue
        failures += _failed(record, collapse)
        acc = record.get("val_acc")
        if record.get("status") == "ok" and isinstance(acc, (int, float)):
            scores.append(float(acc))
    mean = math.fsum(scores) / len(scores) if scores else None
    return Candidate(dict(values), mean, tuple(scores), failures), missing


def _choose(table: Sequence[Candidate], rule: str) -> tuple[Candidate | None, str]:
    """The chosen candidate under ``rule`` (the first listed wins a tie) and the rule that
    decided: ``stable`` takes the best mean among candidates that never failed; where every
    candidate failed somewhere, the fewest failures, then the best mean (``stable, fallback``).
    ``mean`` takes the best mean over ok runs, failures ignored."""
    scored = [c for c in table if c.mean is not None]
    if not scored:
        return None, rule
    if rule == "mean":
        return max(scored, key=lambda c: c.mean), rule
    stable = [c for c in scored if c.failures == 0]
    if stable:
        return max(stable, key=lambda c: c.mean), rule
    return min(scored, key=lambda c: (c.failures, -c.mean)), "stable, fallback"


def _select_in(
    suite: Suite, by_group: Mapping[tuple, Sequence[Cell]], records: Iterable[Mapping]
) -> dict[tuple, Selection]:
    """Each grid point's selection among its ``by_group`` cells' records."""
    by_key = {r["run_key"]: r for r in records}
    collapse = suite.report.collapse_pp / 100
    out: dict[tuple, Selection] = {}
    for group, cells in by_group.items():
        table, missing = [], 0
        for values in dict.fromkeys(tuple(sorted(c.tuned.items())) for c in cells):
            candidate, lost = _candidate(dict(values), cells, by_key, collapse)
            table.append(candidate)
            missing += lost
        best, rule = _choose(table, suite.tune.rule)
        chosen = best if best is not None and not missing else None
        out[group] = Selection(
            values=None if chosen is None else dict(chosen.values),
            val_acc=None if chosen is None else chosen.mean,
            table=tuple(table),
            missing=missing,
            rule=rule,
        )
    return out


def select_coarse(suite: Suite, records: Iterable[Mapping[str, Any]]) -> dict[tuple, Selection]:
    """Each grid point's optimum over the coarse candidates: what the refinement centres on."""
    return _select_in(suite, _coarse_by_group(suite), list(records))


def select(suite: Suite, records: Iterable[Mapping[str, Any]]) -> dict[tuple, Selection]:
    """For each grid point, the candidate its rule chooses among every candidate tried
    (coarse and, with ``tune.refine``, refined). A point with a missing tuning run, or whose
    refinement has not run yet, has no selection yet."""
    records = list(records)
    return _select_in(suite, _read_by_group(suite, records), records)


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


def _every_candidate(suite: Suite) -> list[dict[str, Any]]:
    """The coarse candidates and every refined one any coarse optimum could add."""
    out = candidates(suite)
    for best in candidates(suite):
        out += [v for v in refined_candidates(suite, best) if v not in out]
    return out


def expected_refine_cells(suite: Suite, records: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """The refinement's cells as the sweep will run them, for sizing it: around each point's
    coarse optimum where ``records`` make it, else around the first coarse candidate."""
    coarse = select_coarse(suite, records)
    first = candidates(suite)[0]
    stand_in = {
        g: s if s.values is not None else dataclasses.replace(s, values=first)
        for g, s in coarse.items()
    }
    return refine_cells(suite, stand_in)


def final_candidates(suite: Suite) -> list[Cell]:
    """Every final cell the selection could produce, for the preflight (each candidate value's
    privacy calibration is checked before the first tuning run)."""
    return [
        _with(cell, values, stage="final", tuned=values)
        for cell in suite.cells()
        for values in _every_candidate(suite)
    ]


def selection_lines(selections: Mapping[tuple, Selection]) -> Sequence[str]:
    """One line per grid point for the sweep's output."""
    lines = []
    for (backbone, norm, extra), sel in selections.items():
        where = f"{backbone} {norm}" + (f" {dict(extra)}" if extra else "")
        rejected = sum(1 for c in sel.table if c.failures and c.mean is not None)
        if sel.values is None:
            why = (
                f"{sel.missing} tuning run(s) not finished"
                if sel.missing
                else "every tuning run failed: no final run for this point"
            )
            lines.append(f"{where}: no selection ({why})")
        else:
            lines.append(
                f"{where}: selected {sel.values} (mean val acc {sel.val_acc:.4f}, rule "
                f"{sel.rule}; {len(sel.table)} candidates, {rejected} with a failed seed)"
            )
    return lines


def planned_cells(suite: Suite) -> list[Cell]:
    """Every cell a sweep of ``suite`` may run, for checks before the first one: the grid's; with
    a ``tune`` section, the tuning stage (every refinement a coarse optimum could make
    included), then every final cell a selection can make."""
    if suite.tune is None:
        return suite.cells()
    tuning = [
        c
        for point in _points(suite)
        for values in _every_candidate(suite)
        for c in _tuning(suite, point, values)
    ]
    return [*_unique(tuning), *final_candidates(suite)]
