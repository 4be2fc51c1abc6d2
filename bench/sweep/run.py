"""Sweeping a suite: every cell without a record, through the chosen executor, then the report.

Each cell's record is appended only when the cell has ended (``ok``, or ``failed`` with the
error), so a killed sweep leaves either a whole record or none for a cell, and re-running the
same command resumes with the cells that have none. Two kinds of failure: one that belongs to
the cell (divergence, out of memory, a crash) is ``failed`` and stays so (``retry_failed``
re-runs those); one of the infrastructure (a SLURM time limit or preemption that was not
requeued, a worker process that died, a job that ended without a record) is ``interrupted``,
and a plain re-run runs the cell again. Executors (`EXECUTORS`):

* ``local``: one process, cells in order; or ``workers`` processes (one per visible GPU by
  default when there are several), each taking every n-th cell.
* ``slurm``: one submitit array job per cell; every job appends to the same records file
  under a file lock, and is checkpointable (a time limit or preemption requeues it).
  ``cluster="local"`` runs the same path with submitit's local executor on this machine;
  without it, a machine without SLURM is refused before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import Cell, Suite
from bench.data import check_data
from bench.environment import capture_environment, check_stack
from bench.errors import ExecutorError
from bench.measure import resolve_device
from bench.plan import plan_cells
from bench.privacy_tuning import composed, group_costs, run_history
from bench.provenance import environment_facts
from bench.results.leaderboard import write_report
from bench.results.record import Record
from bench.results.records import read_every_record, read_records, superseded_path
from bench.sweep.cell import discard_checkpoints
from bench.sweep.executor import Executor
from bench.sweep.local import LocalExecutor
from bench.sweep.options import RunOptions
from bench.sweep.outputs import default_out_dir, records_path, reproduce_command, write_suite_json
from bench.sweep.processes import barrier, launched_ranks
from bench.sweep.protocol import (
    final_cells,
    finished_runs,
    planned_cells,
    refine_cells,
    select,
    select_coarse,
    selection_lines,
    tune_cells,
    tuning_by_group,
)
from bench.sweep.restate import restate
from bench.sweep.resume import pending_cells, record_counts
from bench.sweep.slurm import SlurmExecutor

#: The executors by the name ``RunOptions.executor`` (``--executor``) gives.
EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "slurm": SlurmExecutor}


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep did.

    Attributes:
        out_dir: Where the records and the leaderboard are.
        total: Cells in the grid.
        already_done: Cells that had a record before this sweep (skipped unless forced).
        ran: Cells run now.
        statuses: Count of each status among the cells run now.
        wall_s: Wall time of the sweep.
    """

    out_dir: Path
    total: int
    already_done: int
    ran: int
    statuses: dict[str, int]
    wall_s: float


def create_executor(options: RunOptions, out_dir: Path) -> Executor:
    """The executor ``options.executor`` names, for a sweep into ``out_dir``.

    Raises:
        ExecutorError: No executor has that name.
    """
    try:
        chosen = EXECUTORS[options.executor]
    except KeyError:
        names = ", ".join(EXECUTORS)
        raise ExecutorError(f"unknown executor {options.executor!r}; one of: {names}") from None
    return chosen(options, out_dir)


def preflight(cells: Sequence[Cell]) -> None:
    """Plan and calibrate every cell before the first cell runs (`bench.plan.plan_cells`).

    A budget no noise multiplier can meet, or data that is not there (CIFAR-10 not downloaded,
    a data folder that cannot be counted), then stops
    the sweep before anything is written, instead of after the cells before it have run.
    Seconds: the data is counted (CIFAR-10 read once), and calibrations are memoised across
    cells.

    Raises:
        PrivacyError: Naming the first cell that cannot be calibrated.
        DataError: Naming the data that is not there.
    """
    if cells:
        for data in dict.fromkeys(c.data for c in cells):
            check_data(data)  # the data is there: no cell stops for want of it
        plan_cells(cells)


def run_suite(
    suite: Suite,
    options: RunOptions | None = None,
    before_first_cell: Callable[[], None] | None = None,
) -> SweepSummary:
    """Run every cell of ``suite`` that has no record yet (all of them with ``options.force``).

    With a ``tune`` section, the tuning stage runs first; the final stage then runs the cells
    whose selection its records make (`bench.sweep.protocol`).

    Args:
        suite: The validated suite.
        options: How to sweep it (default: `RunOptions` defaults).
        before_first_cell: Called once every check has passed and before anything is
            written (the command line's cost pre-flight and its ``--yes``); may raise a
            `BenchError` to stop the sweep there.

    Returns:
        What the sweep did.
    """
    started = time.perf_counter()
    options = options or RunOptions()
    out_dir = Path(options.out_dir) if options.out_dir else default_out_dir(suite)
    records = records_path(out_dir)
    resolve_device(options.device)  # a device this machine lacks stops the sweep here
    # Under torchrun every rank runs this sweep, each cell together; rank 0 alone writes.
    writer = launched_ranks(options.collective_timeout_s).writer
    executor = create_executor(options, out_dir)
    executor.check()
    stage_cells = suite.cells() if suite.tune is None else tune_cells(suite)
    recorded = record_counts(records)  # read first: a record landing next keeps its cell out
    todo, already = pending_cells(stage_cells, records, options.force, options.retry_failed)
    env = _check_environment(todo, records, options.allow_mixed_env)
    preflight(todo if suite.tune is None else planned_cells(suite))
    if before_first_cell is not None and writer:
        before_first_cell()
    if writer:
        write_suite_json(suite, out_dir, stage_cells)
    if env is not None and writer:
        _capture_environment(suite, out_dir, env)
    statuses = _run_stage(executor, todo, options.force, recorded)
    total, ran = len(stage_cells), len(todo)
    if suite.tune is not None:
        more = _tuned_stages(suite, executor, options, out_dir, stage_cells, writer)
        statuses += more.statuses
        total, ran, already = more.total, ran + more.ran, already + more.already
    if options.report and writer:
        write_report(out_dir)
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return SweepSummary(out_dir, total, already, ran, counts, time.perf_counter() - started)


def _run_stage(
    executor: Executor, cells: Sequence[Cell], force: bool, recorded: dict[str, int]
) -> list[str]:
    """Run ``cells``; forced, from step 0 (their checkpoints discarded first). ``recorded``:
    each run key's records when the cells were chosen; a cell that another process sharing
    the folder records meanwhile is skipped (`Executor.recorded`)."""
    executor.recorded = recorded
    if force and cells:
        discarded = discard_checkpoints(cells, executor.records_path)
        if discarded:
            print(f"--force: discarded {discarded} checkpoints", file=sys.stderr)
    return executor.run(cells)


@dataclass(frozen=True)
class _Stages:
    """What the refinement and final stages of a tuned sweep did (`_tuned_stages`)."""

    statuses: list[str]
    total: int
    ran: int
    already: int


def _tuned_stages(
    suite: Suite,
    executor: Executor,
    options: RunOptions,
    out_dir: Path,
    coarse: Sequence[Cell],
    writer: bool,
) -> _Stages:
    """After the coarse tuning stage: the refinement around each coarse optimum, then the final
    cells at each point's selection. ``total`` counts every cell of the sweep (``coarse``
    included)."""
    records = records_path(out_dir)
    barrier()  # every rank reads the tuning records rank 0 has written
    recorded = record_counts(records)
    refined, refine_todo, refine_already = _refine_stage(suite, records, options)
    tuning = [*coarse, *refined]
    if writer and refined:
        write_suite_json(suite, out_dir, tuning)
    statuses = _run_stage(executor, refine_todo, options.force, recorded)
    barrier()  # and the refinement's
    recorded = record_counts(records)
    finals, final_todo, final_already = _final_stage(suite, records, options)
    if writer:
        write_suite_json(suite, out_dir, [*tuning, *finals])
        # Only the records that stay: a cell about to run (``--force``, ``--retry-failed``) is
        # charged its current record as an earlier attempt, which is that record's own run.
        running = {c.run_key for c in final_todo}
        restate(records, [c for c in finals if c.run_key not in running])
    statuses += _run_stage(executor, final_todo, options.force, recorded)
    return _Stages(
        statuses,
        len(tuning) + len(finals),
        len(refine_todo) + len(final_todo),
        refine_already + final_already,
    )


def _refine_stage(
    suite: Suite, records: Path, options: RunOptions
) -> tuple[list[Cell], list[Cell], int]:
    """Each grid point's coarse optimum from the coarse tuning records, then the refinement's
    cells around it: ``(all made so far, those to run now, those already recorded)``."""
    coarse = select_coarse(suite, read_records(records).records if records.exists() else [])
    cells = refine_cells(suite, coarse)
    todo, already = pending_cells(cells, records, options.force, options.retry_failed)
    return cells, todo, already


def _final_stage(
    suite: Suite, records: Path, options: RunOptions
) -> tuple[list[Cell], list[Cell], int]:
    """Select each grid point's tuning values from the tuning records, then the final cells:
    ``(all final cells selected so far, those to run now, those already recorded)``."""
    existing = read_records(records).records if records.exists() else []
    selections = select(suite, existing)
    if options.progress:
        for line in selection_lines(selections):
            print(f"tune: {line}", file=sys.stderr)
    # Every record of both files: a records file written before a re-run's record replaced
    # the old one (or merged by hand) holds a replaced run beside its re-run.
    every = [
        r for p in (records, superseded_path(records)) if p.exists() for r in read_every_record(p)
    ]
    finals = final_cells(suite, selections, _tuning_costs(suite, existing, every))
    todo, already = pending_cells(finals, records, options.force, options.retry_failed)
    # A cell to run now composes each of its finished records; a recorded one, each but the
    # newest (the run its record is): `restate` checks that record's figure against it.
    attempts, running = finished_runs(every), {c.run_key for c in todo}
    finals = [
        _charge_earlier_attempts(c, max(0, attempts.get(c.run_key, 0) - (c.run_key not in running)))
        for c in finals
    ]
    return finals, [c for c in finals if c.run_key in running], already


def _charge_earlier_attempts(cell: Cell, attempts: int) -> Cell:
    """A final cell whose earlier runs finished (``attempts``: a failed run it retries under
    ``--retry-failed``, an ok one ``--force`` repeats) with each of them composed into its
    ``epsilon_with_tuning``: they trained on the private set, their outcome is published in
    the superseded file and decided the re-run, so retrying until a run succeeds is charged."""
    if not attempts or cell.tuning_history is None:
        return cell
    (plan,) = plan_cells([cell])
    earlier = run_history(plan.charges, plan.noise_multiplier, plan.sample_rate, plan.steps)
    history = composed([cell.tuning_history, *[earlier] * attempts])
    return dataclasses.replace(cell, tuning_history=history)


def _tuning_costs(
    suite: Suite, records: Sequence[Record], superseded: Sequence[Record]
) -> dict[tuple, tuple]:
    """Per grid point, the composed planned history of its tuning runs, refinement and
    replaced re-runs included (planned: a run that failed or stopped early is charged in
    full), for its final runs' ``epsilon_with_tuning`` (`tuning_by_group`)."""
    by_group = tuning_by_group(suite, records, superseded)
    return group_costs({g: plan_cells(c) for g, c in by_group.items()})


def _check_environment(
    todo: Sequence[Cell], records: Path, allow_mixed: bool
) -> dict[str, Any] | None:
    """This process's software environment, once it is known that appending its records will
    not mix stacks (None when there is nothing to run)."""
    if not todo:
        return None
    env = environment_facts()
    existing = read_records(records).records if records.exists() else []
    check_stack(existing, env, records, allow_mixed)
    return env


def _capture_environment(suite: Suite, out_dir: Path, env: dict[str, Any]) -> None:
    """Write the environment this sweep runs under beside its records."""
    records = records_path(out_dir)
    capture_environment(
        out_dir,
        env,
        f"captured when a sweep of suite {suite.name} started, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        reproduce_command(suite, out_dir),
        # Any record in the folder (this stage's or the tuning stage's) was made somewhere.
        resumed=records.exists() and records.stat().st_size > 0,
    )
