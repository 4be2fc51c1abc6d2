"""Suite runner: sweep a suite's grid, one atomic record per cell, resumable after any stop.

Each cell's record is appended only when the cell has ended (``ok``, ``failed`` with the error,
``skipped`` with the reason), so a killed sweep leaves either a whole record or none for a cell,
and re-running the same command resumes with the cells that have none. Executors:

* ``local``: one process, cells in order; or ``workers`` processes (one per visible GPU by
  default when there are several), each taking every n-th cell.
* ``slurm``: one submitit array job per cell; every job appends to the same records file
  under a file lock. ``cluster="local"`` runs the same path with submitit's local executor.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.config import Cell, Suite, cell_to_dict, suite_to_dict
from bench.errors import BenchError, IncompatibleError
from bench.plan import cell_label
from bench.results.records import append_record, finished_keys

REPO = Path(__file__).resolve().parents[1]


def default_out_dir(suite: Suite) -> Path:
    """``reports/<suite name>`` in the repository."""
    return REPO / "reports" / suite.name


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


def write_suite_json(suite: Suite, out_dir: Path) -> Path:
    """Write the resolved suite and its full list of cells (atomically) for the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = suite_to_dict(suite)
    payload["cells"] = [
        {
            "run_key": c.run_key,
            "backbone": c.backbone,
            "norm": c.norm,
            "seed": c.seed,
            "overrides": cell_to_dict(c)["overrides"],
        }
        for c in suite.cells()
    ]
    path = out_dir / "suite.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _base_record(cell: Cell) -> dict[str, Any]:
    """The fields every record has, whatever the outcome."""
    d = cell_to_dict(cell)
    return {
        "run_key": d["run_key"],
        "suite": cell.suite,
        "backbone": cell.backbone,
        "norm": cell.norm,
        "seed": cell.seed,
        "overrides": d["overrides"],
        "dataset": cell.data.dataset_name,
        "epsilon_target": cell.privacy.epsilon,
        "delta": cell.privacy.delta,
        "accountant": cell.privacy.accountant,
        "max_grad_norm": cell.privacy.max_grad_norm,
        "config": d,
    }


def run_cell(
    cell: Cell,
    records_path: Path,
    device: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Run one cell and append its record; a failure or refusal is recorded, not raised.

    ``KeyboardInterrupt`` and user errors (`BenchError`, e.g. unreadable data) propagate with
    no record written: the cell did not run, and a re-run will try it again.
    """
    import torch

    from bench.engine import Diverged, train_cell
    from bench.measure import provenance, resolve_device

    dev = resolve_device(device)
    started = time.perf_counter()
    base = _base_record(cell)
    try:
        record = {**base, **train_cell(cell, dev, progress=progress)}
    except IncompatibleError as err:
        record = {**base, "status": "skipped", "error": str(err)}
    except (KeyboardInterrupt, BenchError):
        raise
    except torch.cuda.OutOfMemoryError as err:
        record = {**base, "status": "failed", "error": f"out of memory: {err}".splitlines()[0]}
    except Diverged as err:
        record = {**base, "status": "failed", "error": str(err)}
    except Exception as err:
        record = {
            **base,
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=-8),
        }
    if record["status"] != "ok":
        prov = provenance(dev)
        record.update(
            provenance=prov, device=prov["device_name"], wall_s=time.perf_counter() - started
        )
    append_record(records_path, record)
    return record


def _worker(
    cells: Sequence[Cell], records_path: Path, device: str | None, threads: int | None
) -> list[str]:
    """A local worker process: run its share of the cells in order; returns their statuses."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return [run_cell(c, records_path, device)["status"] for c in cells]


def slurm_job(cell: Cell, records_path: str, device: str | None = None) -> str:
    """Entry point of one submitit job (module level so that it pickles)."""
    return run_cell(cell, Path(records_path), device)["status"]


def pending_cells(suite: Suite, records_path: Path, force: bool) -> tuple[list[Cell], int]:
    """The cells to run now, and how many of the grid already have a record."""
    cells = suite.cells()
    done = finished_keys(records_path)
    already = sum(c.run_key in done for c in cells)
    return (cells if force else [c for c in cells if c.run_key not in done]), already


def preflight(cells: Sequence[Cell]) -> None:
    """Plan and calibrate every cell before the first cell runs (`bench.plan.plan_cells`).

    A budget no noise multiplier can meet, or a data folder that cannot be counted, then stops
    the sweep before anything is written, instead of after the cells before it have run.
    Seconds: the data is counted, not loaded, and calibrations are memoised across cells.
    Cells whose backbone refuses the norm pass: they run as refused and are recorded skipped.

    Raises:
        PrivacyError: Naming the first cell that cannot be calibrated.
    """
    if cells:
        from bench.plan import plan_cells  # torch: only when there is something to run

        plan_cells(cells)


def run_suite(
    suite: Suite,
    *,
    out_dir: Path | None = None,
    force: bool = False,
    device: str | None = None,
    executor: str = "local",
    workers: int | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
    report: bool = True,
) -> SweepSummary:
    """Run every cell of ``suite`` that has no record yet (all of them with ``force``).

    Args:
        out_dir: Records, suite.json and the leaderboard go here (default reports/<name>).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``... (local executor, one worker).
        executor: ``local`` or ``slurm``.
        workers: Local worker processes; default one per visible GPU (one on the CPU).
        slurm: submitit parameters (``cluster`` = ``local`` runs jobs as local processes).
        progress: Show a progress bar with the current cell and an ETA.
        report: Write the leaderboard when the sweep ends.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else default_out_dir(suite)
    records_path = out_dir / "records.jsonl"
    todo, already = pending_cells(suite, records_path, force)
    preflight(todo)
    write_suite_json(suite, out_dir)
    statuses: list[str] = []
    if executor == "slurm":
        statuses = _run_slurm(todo, records_path, out_dir, slurm or {}, device)
    else:
        n = workers if workers is not None else _visible_gpus()
        if n > 1 and len(todo) > 1:
            statuses = _run_parallel(todo, records_path, n, device)
        else:
            statuses = _run_sequential(todo, records_path, device, progress)
    if report:
        from bench.results.report import write_report

        write_report(out_dir)
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return SweepSummary(
        out_dir, len(suite.cells()), already, len(todo), counts, time.perf_counter() - started
    )


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


class _StepProgress:
    """Shows the current cell's step and loss on the sweep's bar, at most once a second."""

    def __init__(self, bar, label: str):
        self.bar, self.label, self.last = bar, label, 0.0

    def __call__(self, step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self.last > 1.0 or step == total:
            self.bar.set_postfix_str(f"{self.label} | step {step}/{total} loss {loss:.3f}")
            self.last = now


def _run_sequential(
    todo: Sequence[Cell], records_path: Path, device: str | None, show: bool
) -> list[str]:
    from tqdm import tqdm

    statuses = []
    bar = tqdm(
        todo,
        desc="cells",
        unit="cell",
        disable=not show or not todo,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    for cell in bar:
        label = cell_label(cell)
        step_progress = _StepProgress(bar, label)
        bar.set_postfix_str(label)
        record = run_cell(cell, records_path, device, progress=step_progress if show else None)
        statuses.append(record["status"])
        if record["status"] != "ok":
            bar.write(f"{record['status']}: {label}: {record.get('error')}", file=sys.stderr)
    return statuses


def _run_parallel(
    todo: Sequence[Cell], records_path: Path, n: int, device: str | None
) -> list[str]:
    """One process per GPU (or per CPU worker), each running every n-th cell."""
    import torch

    gpus = torch.cuda.is_available() and torch.cuda.device_count() >= n and device != "cpu"
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    print(f"running {len(todo)} cells on {n} {'GPU' if gpus else 'CPU'} workers", file=sys.stderr)
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                _worker,
                todo[i::n],
                records_path,
                f"cuda:{i}" if gpus else (device or "cpu"),
                threads,
            )
            for i in range(n)
        ]
        return [s for f in futures for s in f.result()]


def _run_slurm(
    todo: Sequence[Cell],
    records_path: Path,
    out_dir: Path,
    params: dict[str, Any],
    device: str | None,
) -> list[str]:
    """Submit one array job per cell with submitit and wait for them."""
    import submitit

    params = dict(params)
    cluster = params.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=out_dir / "submitit", cluster=cluster)
    executor.update_parameters(name=f"dpnb-{out_dir.name}", **params)
    if not todo:
        return []
    jobs = executor.map_array(
        slurm_job, list(todo), [str(records_path)] * len(todo), [device] * len(todo)
    )
    print(f"submitted {len(jobs)} jobs ({jobs[0].job_id.split('_')[0]}); waiting", file=sys.stderr)
    statuses = []
    for job, cell in zip(jobs, todo, strict=True):
        try:
            statuses.append(job.result())
        except Exception as err:
            statuses.append("failed")
            print(
                f"job {job.job_id} ({cell_label(cell)}) ended without a record: {err}",
                file=sys.stderr,
            )
    return statuses
