"""What a sweep will cost before it starts: the device, the cells that will run, the time.

The time comes from one measured DP step per distinct step (backbone, norm, batch, views,
image size, precision, sparsity) on this device, at a probe batch of at most one physical
batch and `PROBE_IMAGES` images, extrapolated linearly to the cell's batch and multiplied by
its steps, plus its evaluation and non-private timing. Linear extrapolation from a small batch
overstates the per-image cost where a larger batch uses the device better (a GPU), so there
the figure is an upper bound. The step is measured now, so a machine busy with other work
gives a longer estimate, as it will give a longer run. No library sizes a DP-SGD run's cost;
the timing is the runner's own step (`bench.sweep.slurm.measure_step_s`, the one the SLURM
time limit starts from).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.config import Cell, Suite
from bench.data import check_data
from bench.errors import BenchError, DataError
from bench.measure import resolve_device
from bench.plan import data_size, plan_cells
from bench.provenance import cpu_model, device_name
from bench.results.records import read_records
from bench.sweep.local import pool_shape
from bench.sweep.options import RunOptions
from bench.sweep.protocol import (
    expected_final_cells,
    expected_refine_cells,
    select,
    tune_cells,
)
from bench.sweep.resume import pending_cells
from bench.sweep.slurm import measure_step_s
from bench.train.ranks import busiest_share

#: Images (examples x views) of the probe step each distinct step is timed at.
PROBE_IMAGES = 256

#: A sweep whose estimate on this device is above this many hours asks for ``--yes``.
CONFIRM_ABOVE_H = 12.0

#: A forward pass costs about a third of a forward-backward pass with per-example clipping.
FORWARD_SHARE = 1 / 3


class CostError(BenchError):
    """Raised when a sweep's estimate is above `CONFIRM_ABOVE_H` and ``--yes`` was not given."""


@dataclass(frozen=True)
class SweepCost:
    """A sweep's cost on this device, before it runs.

    Attributes:
        device: The device and its model (``cpu AMD EPYC (2 threads)``, a GPU's name).
        to_run: Cells that will run now (tuning and final; a final cell whose selection is
            not made yet counts once, as it will run once).
        tuning: How many of ``to_run`` are tuning runs.
        recorded: Cells of the sweep that already have a final record (skipped).
        cell_s: Estimated seconds of each cell to run, in order, as it will run (on
            ``nproc`` processes; on a worker sharing the CPU cores with the others).
        step_s: Measured seconds per DP step at each distinct step, extrapolated to its batch.
        nproc: Processes each cell runs on.
        workers: Cells run at once (the local executor's worker pool), dealt round robin.
        shared_cores: The workers share the CPU cores (no GPU each).
        busy: On the CPU, the 1-minute load average (this process included) and the core
            count, when other work held at least half the cores as the steps were measured
            (`busy_cpu`); else None.
    """

    device: str
    to_run: int
    tuning: int
    recorded: int
    cell_s: tuple[float, ...]
    step_s: tuple[float, ...]
    nproc: int = 1
    workers: int = 1
    shared_cores: bool = False
    busy: tuple[float, int] | None = None

    @property
    def total_s(self) -> float:
        """The whole sweep's estimated wall-clock seconds: with several workers, the longest
        worker's cells (the pool deals worker i the cells i, i + n, i + 2n...)."""
        n = max(1, self.workers)
        return max((sum(self.cell_s[i::n]) for i in range(n)), default=0.0)

    def lines(self) -> list[str]:
        """What the pre-flight and ``--dry-run`` print."""
        tuning = (
            f" ({self.tuning} tuning, {self.to_run - self.tuning} final)" if self.tuning else ""
        )
        lines = [
            f"device: {self.device}",
            f"cells to run: {self.to_run}{tuning}; already recorded: {self.recorded}",
        ]
        if self.cell_s:
            per = f"{_duration(min(self.cell_s))}-{_duration(max(self.cell_s))} per cell"
            if min(self.cell_s) * 1.05 >= max(self.cell_s):
                per = f"{_duration(self.cell_s[0])} per cell"
            lines.append(
                f"estimated time on this device: {per}, {_duration(self.total_s)} in all "
                f"(measured here, now: one DP step of at most {PROBE_IMAGES} images per distinct "
                f"step, {_duration(min(self.step_s), 2)}-{_duration(max(self.step_s), 2)} per "
                "step at the suite's batch, extrapolated linearly; an upper bound on a GPU)"
            )
        if self.busy is not None:
            load, cores = self.busy
            lines.append(
                f"the CPU was busy with other work when the step was measured (load average "
                f"{load:.1f} on {cores} cores, this process included): the estimate holds "
                "while it stays that busy, and is longer than the same sweep on an idle machine"
            )
        if self.nproc > 1:
            lines.append(
                f"processes per cell: {self.nproc}; the times above assume ideal scaling over "
                "whole physical batches (a step takes the busiest process's share of them; a "
                "lower bound: `python -m bench.perf scaling` measures the real speed-up)"
            )
        if self.workers > 1:
            shared = (
                f"sharing the CPU cores, so each cell's time above is {self.workers} times one "
                "worker's alone (ideal sharing)"
                if self.shared_cores
                else "one GPU each"
            )
            lines.append(
                f"cells at once: {self.workers} workers, {shared}; the total is the longest "
                "worker's cells, dealt round robin as the pool deals them"
            )
        if self.total_s > CONFIRM_ABOVE_H * 3600:
            lines.append(f"above {CONFIRM_ABOVE_H:g} h on this device: the run asks for --yes")
        return lines


def _duration(seconds: float, digits: int = 0) -> str:
    """``45 s``, ``12 min``, ``3.4 h``, ``120 d``: a duration a reader takes in at a glance."""
    if seconds < 90:
        return f"{seconds:.{digits}f} s" if digits else f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def cells_to_run(
    suite: Suite, records: Path, force: bool = False, retry_failed: bool = False
) -> tuple[list[Cell], int, int]:
    """The cells a sweep of ``suite`` will run now: ``(cells, tuning count, recorded count)``.

    With a ``tune`` section: the tuning cells without a record (the refinement's at each
    point's coarse optimum, or, before the coarse records make it, around the first
    candidate: as many cells, of the same cost), then one final cell per grid
    cell (at its selection when the records make one, else standing in at the first candidate:
    the tuned values seldom change a run's cost), those without a record.
    """
    if suite.tune is None:
        todo, recorded = pending_cells(suite.cells(), records, force, retry_failed)
        return todo, 0, recorded
    existing = read_records(records).records if records.exists() else []
    tuning = [*tune_cells(suite), *expected_refine_cells(suite, existing)]
    tunes, recorded = pending_cells(tuning, records, force, retry_failed)
    finals = expected_final_cells(suite, select(suite, existing))
    final_todo, final_recorded = pending_cells(finals, records, force, retry_failed)
    return [*tunes, *final_todo], len(tunes), recorded + final_recorded


def _step_key(cell: Cell) -> tuple:
    """What a DP step's cost depends on: two cells with the same key share a measurement."""
    t = cell.training
    size = data_size(cell.data)  # the dataset's declared shape (a folder declares none)
    side = size.image_size or 32
    return (
        cell.backbone,
        cell.norm,
        cell.data.source,
        size.channels,
        side,
        t.batch_size,
        t.augmult,
        t.max_physical_batch,
        t.grad_sample_mode,
        t.precision,
        repr(t.pre_prune),
        repr(t.grad_drop),
    )


def _probe(cell: Cell) -> Cell:
    """``cell`` at a batch of at most one physical batch and `PROBE_IMAGES` images (examples x
    views): a DP step is its physical batches one after the other, so it scales linearly."""
    t = cell.training
    n = max(1, min(t.batch_size, t.max_physical_batch, PROBE_IMAGES // t.augmult))
    small = dataclasses.replace(t, batch_size=n, max_physical_batch=min(n, t.max_physical_batch))
    return dataclasses.replace(cell, training=small)


def step_seconds(cell: Cell, device: str | None) -> float:
    """Seconds per DP step of ``cell`` at its batch on ``device``: one probe step, extrapolated."""
    probe = _probe(cell)
    return (
        measure_step_s(probe, device, steps=1)
        * cell.training.batch_size
        / (probe.training.batch_size)
    )


def cell_seconds(cell: Cell, steps: int, step_s: float, nproc: int = 1) -> float:
    """A cell's estimated seconds: its DP steps, the timed non-private steps when it measures
    them (half a DP step each), and its evaluation (forward passes over the scored split).

    On ``nproc`` processes a DP step takes the busiest rank's share of one process's
    (`bench.train.ranks.busiest_share`: ideal scaling over whole physical batches), rank 0
    evaluates alone, and the non-private reference is not measured (one process only)."""
    t = cell.training
    n_eval = cell.data.val_split if cell.stage == "tune" else (cell.data.test_size or 10_000)
    per_image = step_s / (t.batch_size * t.augmult)
    evaluation = n_eval * per_image * FORWARD_SHARE * (2 if t.ema else 1)
    nonprivate = (t.throughput_warmup_steps + t.throughput_steps) * step_s / 2
    share = busiest_share(t.batch_size, t.max_physical_batch, nproc)
    measured = t.measure_nonprivate and nproc == 1
    return steps * step_s * share + evaluation + (nonprivate if measured else 0.0)


def estimate(
    suite: Suite,
    records: Path,
    device: str | None = None,
    options: RunOptions | None = None,
) -> SweepCost:
    """The cost of sweeping ``suite`` into ``records`` now with ``options`` (default
    `RunOptions`), on ``device`` (seconds per probe step; the calibrations are memoised, so
    the pre-flight that follows repeats none): the cells the sweep will run
    (``options.force``, ``options.retry_failed``), each on ``options.cell_processes``
    processes, several at once where the ``local`` executor has a worker pool
    (`bench.sweep.local.pool_shape`)."""
    options = options or RunOptions()
    todo, tuning, recorded = cells_to_run(suite, records, options.force, options.retry_failed)
    nproc = options.cell_processes
    local = options.executor == "local"
    workers, own_gpus = pool_shape(options, len(todo)) if local else (1, True)
    slowdown = 1 if own_gpus else workers  # a worker has 1/workers of the cores
    measured: dict[tuple, float] = {}
    cell_s = []
    busy = busy_cpu(device)
    for plan in plan_cells(todo):
        key = _step_key(plan.cell)
        if key not in measured:
            measured[key] = step_seconds(plan.cell, device)
        cell_s.append(cell_seconds(plan.cell, plan.steps, measured[key], nproc) * slowdown)
    return SweepCost(
        describe_device(device),
        len(todo),
        tuning,
        recorded,
        tuple(cell_s),
        tuple(measured.values()),
        nproc,
        workers,
        not own_gpus,
        busy if measured else None,
    )


def busy_cpu(device: str | None) -> tuple[float, int] | None:
    """On the CPU, the 1-minute load average and the core count when other work holds at
    least half the cores (the load less one for this process, busy loading and calibrating);
    else None."""
    if resolve_device(device).type != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return (load, cores) if load - 1 >= cores / 2 else None


def describe_device(device: str | None) -> str:
    """The device a sweep runs on, by name; on the CPU with its model (``/proc/cpuinfo``)."""
    dev = resolve_device(device)
    name = device_name(dev)
    return (
        f"{dev} ({name})" if dev.type == "cuda" else f"cpu {cpu_model()} ({name.rsplit('(', 1)[-1]}"
    )


def confirm(cost: SweepCost, yes: bool, limit_h: float = CONFIRM_ABOVE_H) -> None:
    """Refuse a sweep estimated above ``limit_h`` hours on this device unless ``yes``.

    Raises:
        CostError: One line: the estimate, the device, and how to go ahead.
    """
    if yes or cost.total_s <= limit_h * 3600:
        return
    raise CostError(
        f"this sweep is estimated at {_duration(cost.total_s)} on {cost.device} ({cost.to_run} "
        f"cells; more than {limit_h:g} h): add --yes to run it here, or see --dry-run"
    )


def check_suite_data(suite: Suite) -> None:
    """Every data source the suite's cells read is there (`bench.data.check_data`), checked once
    per distinct data section before anything is timed or trained.

    Raises:
        DataError: One line naming the path and what to do.
    """
    for data in dict.fromkeys(c.data for c in suite.cells()):
        check_data(data)


def data_lines(suite: Suite) -> list[str]:
    """For ``--dry-run``, which downloads nothing: each data source of the suite that is not
    there yet, and what the run will do about it."""
    lines = []
    for data in dict.fromkeys(c.data for c in suite.cells()):
        try:
            check_data(dataclasses.replace(data, download=False))
        except DataError as err:
            then = (
                "the run downloads it first (data.download: true)"
                if data.download
                else "the run stops before its first cell (exit 2)"
            )
            lines.append(f"data not there yet: {str(err).split(';')[0]}; {then}")
    return lines


def print_cost(cost: SweepCost, lines: Sequence[str] | None = None) -> None:
    """The pre-flight's lines on stderr."""
    for line in lines or cost.lines():
        print(f"pre-flight: {line}", file=sys.stderr)
