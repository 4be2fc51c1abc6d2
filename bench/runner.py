"""Suite runner: sweep a suite's grid, one atomic record per cell, resumable after any stop.

Each cell's record is appended only when the cell has ended (``ok``, ``failed`` with the error,
``skipped`` with the reason), so a killed sweep leaves either a whole record or none for a cell,
and re-running the same command resumes with the cells that have none. Two kinds of failure:
one that belongs to the cell (divergence, out of memory, a crash) is ``failed`` and stays so
(``retry_failed`` re-runs those); one of the infrastructure (a SLURM time limit or preemption
that was not requeued, a worker process that died, a job that ended without a record) is
``interrupted``, and a plain re-run runs the cell again. Executors:

* ``local``: one process, cells in order; or ``workers`` processes (one per visible GPU by
  default when there are several), each taking every n-th cell.
* ``slurm``: one submitit array job per cell; every job appends to the same records file
  under a file lock, and is checkpointable (a time limit or preemption requeues it).
  ``cluster="local"`` runs the same path with submitit's local executor on this machine;
  without it, a machine without SLURM is refused before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bench.config import Cell, Suite, cell_to_dict, suite_to_dict
from bench.errors import BenchError, ExecutorError, IncompatibleError
from bench.plan import cell_label
from bench.results.record import FINAL_STATUSES
from bench.results.records import append_record, finished_keys, read_records

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


def write_suite_json(suite: Suite, out_dir: Path, cells: Sequence[Cell] | None = None) -> Path:
    """Write the resolved suite and its full list of cells (atomically) for the report.

    ``cells``: the cells planned so far (default: the grid's); with a ``tune`` section, the
    tuning cells and the final cells whose selection is made.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = suite_to_dict(suite)
    payload["cells"] = [
        {
            "run_key": c.run_key,
            "backbone": c.backbone,
            "norm": c.norm,
            "seed": c.seed,
            "stage": c.stage,
            "dp_valid": c.privacy.simulate_batch_size is None,
            "overrides": cell_to_dict(c)["overrides"],
        }
        for c in (suite.cells() if cells is None else cells)
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
        "stage": cell.stage,
        "tuned": d["tuned"],
        "dp_valid": cell.privacy.simulate_batch_size is None,
        "dataset": cell.data.dataset_name,
        "epsilon_target": cell.privacy.epsilon,
        "delta": cell.privacy.delta,
        "accountant": cell.privacy.accountant,
        "max_grad_norm": cell.privacy.max_grad_norm,
        "config": d,
    }


def checkpoint_dir(records_path: Path) -> Path:
    """Where the runs of a records file keep their checkpoints: ``<records folder>/checkpoints``."""
    return Path(records_path).parent / "checkpoints"


def discard_checkpoints(cells: Sequence[Cell], records_path: Path) -> int:
    """Delete the checkpoints of ``cells``, so that a forced run starts from step 0; returns
    how many there were."""
    from bench import checkpoint

    paths = [checkpoint.checkpoint_path(checkpoint_dir(records_path), c.run_key) for c in cells]
    found = sum(p.exists() for p in paths)
    for path in paths:
        checkpoint.remove(path)
    return found


def run_cell(
    cell: Cell,
    records_path: Path,
    device: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    keep_checkpoint: bool = False,
) -> dict[str, Any]:
    """Run one cell and append its record; a failure or refusal is recorded, not raised.

    ``KeyboardInterrupt`` and user errors (`BenchError`, e.g. unreadable data) propagate with
    no record written: the cell did not run, and a re-run will try it again.

    The run checkpoints under ``<records folder>/checkpoints/<run_key>/`` and resumes from
    there (a requeued SLURM job, a re-run after a kill); the checkpoint is deleted once the
    record is written, unless ``keep_checkpoint``. ``training.save_model`` weights go to
    ``<records folder>/models/`` (`bench.saved_model`).
    """
    import torch

    from bench import checkpoint, saved_model
    from bench.measure import provenance, resolve_device
    from bench.train.cell import train_cell
    from bench.train.loop import Diverged

    dev = resolve_device(device)
    started = time.perf_counter()
    base = _base_record(cell)
    try:
        measured = train_cell(
            cell,
            dev,
            progress=progress,
            checkpoint_dir=checkpoint_dir(records_path),
            model_dir=records_path.parent / saved_model.FOLDER,
        )
        record = {**base, **measured}
    except IncompatibleError as err:
        record = {**base, "status": "skipped", "error": str(err)}
    except (KeyboardInterrupt, BenchError):
        raise
    except torch.cuda.OutOfMemoryError as err:
        record = {**base, "status": "failed", "error": f"out of memory: {err}".splitlines()[0]}
    except Diverged as err:
        record = {**base, "status": "failed", "error": str(err), "diverged": True}
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
    if not keep_checkpoint:
        checkpoint.remove(checkpoint.checkpoint_path(checkpoint_dir(records_path), cell.run_key))
    return record


def _worker(
    cells: Sequence[Cell],
    records_path: Path,
    device: str | None,
    threads: int | None,
    keep_checkpoints: bool = False,
) -> list[str]:
    """A local worker process: run its share of the cells in order; returns their statuses."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    return [
        run_cell(c, records_path, device, keep_checkpoint=keep_checkpoints)["status"] for c in cells
    ]


def record_interrupted(
    cell: Cell, records_path: Path, reason: str, status: str = "interrupted"
) -> dict[str, Any]:
    """Append the record of a run that ended without recording itself: ``interrupted`` when
    the infrastructure ended it, ``failed`` when it raised where no record could be written."""
    record = {**_base_record(cell), "status": status, "error": reason, "wall_s": None}
    append_record(records_path, record)
    return record


def _without_final_record(cells: Sequence[Cell], records_path: Path) -> list[Cell]:
    """The cells whose newest record is not one they ended on their own (none, or interrupted)."""
    done = finished_keys(records_path) if records_path.exists() else set()
    return [c for c in cells if c.run_key not in done]


class SlurmCellJob:
    """Entry point of one submitit job; checkpointable, so that a time limit or preemption
    requeues the job instead of ending it (submitit calls `checkpoint` on the signal).

    A module-level class so that it pickles. A requeued job calls `run_cell` again, which
    resumes the cell from its newest checkpoint (``training.checkpoint_every``).
    """

    def __call__(
        self,
        cell: Cell,
        records_path: str,
        device: str | None = None,
        keep_checkpoint: bool = False,
    ) -> str:
        return run_cell(cell, Path(records_path), device, keep_checkpoint=keep_checkpoint)["status"]

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def pending_cells(
    suite: Suite | Sequence[Cell], records_path: Path, force: bool, retry_failed: bool = False
) -> tuple[list[Cell], int]:
    """The cells to run now, and how many of them already have a final record.

    A cell runs when it has no record, when its newest record is ``interrupted``, with
    ``retry_failed`` when it is ``failed``, and always with ``force``.
    """
    cells = suite.cells() if isinstance(suite, Suite) else list(suite)
    statuses = tuple(s for s in FINAL_STATUSES if not (retry_failed and s == "failed"))
    done = finished_keys(records_path, statuses)
    already = sum(c.run_key in finished_keys(records_path) for c in cells)
    return (cells if force else [c for c in cells if c.run_key not in done]), already


#: ``slurm.cluster`` values that emulate the cluster on this machine (submitit's executors).
LOCAL_CLUSTERS = ("local", "debug")


def check_executor(executor: str, slurm: dict[str, Any] | None) -> None:
    """Refuse an executor that cannot run here, before anything is written or submitted.

    Raises:
        ExecutorError: ``slurm`` on a machine without SLURM (no ``sbatch``), unless
            ``slurm["cluster"]`` asks for local emulation.
    """
    if executor != "slurm":
        return
    cluster = (slurm or {}).get("cluster")
    if cluster in LOCAL_CLUSTERS:
        return
    if shutil.which("sbatch") is None:
        raise ExecutorError(
            "--executor slurm: SLURM is not available on this machine (no sbatch on PATH), "
            "so nothing was submitted; to test a sweep's cluster path here, add "
            "--slurm-cluster local"
        )


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
    retry_failed: bool = False,
    allow_mixed_env: bool = False,
    device: str | None = None,
    executor: str = "local",
    workers: int | None = None,
    slurm: dict[str, Any] | None = None,
    progress: bool = True,
    report: bool = True,
    keep_checkpoints: bool = False,
) -> SweepSummary:
    """Run every cell of ``suite`` that has no record yet (all of them with ``force``).

    Args:
        out_dir: Records, suite.json and the leaderboard go here (default reports/<name>).
        force: Re-run every cell, whatever its record, from step 0: the checkpoints of the
            cells about to run are discarded first.
        retry_failed: Also re-run the cells whose newest record is ``failed``.
        allow_mixed_env: Append even when existing records were made under another software
            stack (the report then lists the stacks); refused otherwise.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``... (local executor, one worker).
        executor: ``local`` or ``slurm``.
        workers: Local worker processes; default one per visible GPU (one on the CPU).
        slurm: submitit parameters (``cluster`` = ``local`` runs jobs as local processes;
            ``step_s``, seconds per DP step on the cluster's device, sizes the time limit when
            ``timeout_min`` is not given).
        progress: Show a progress bar with the current cell and an ETA.
        report: Write the leaderboard when the sweep ends.
        keep_checkpoints: Keep each run's last checkpoint after its record is written.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else default_out_dir(suite)
    records_path = out_dir / "records.jsonl"
    check_executor(executor, slurm)
    if suite.tune is not None:
        from bench.protocol import final_candidates, tune_cells

        stage_cells = tune_cells(suite)
        checked = [*stage_cells, *final_candidates(suite)]
    else:
        stage_cells = checked = suite.cells()
    todo, already = pending_cells(stage_cells, records_path, force, retry_failed)
    env = _check_environment(todo, records_path, allow_mixed_env)
    preflight(checked if suite.tune is not None else todo)
    write_suite_json(suite, out_dir, stage_cells)
    if env is not None:
        from bench.environment import capture_environment

        capture_environment(
            out_dir,
            env,
            f"captured when a sweep of suite {suite.name} started, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            reproduce_command(suite, out_dir),
            # Any record in the folder (this stage's or the tuning stage's) was made somewhere.
            resumed=records_path.exists() and records_path.stat().st_size > 0,
        )

    def run(cells: Sequence[Cell]) -> list[str]:
        if force and cells:
            discarded = discard_checkpoints(cells, records_path)
            if discarded:
                print(f"--force: discarded {discarded} checkpoints", file=sys.stderr)
        keep = keep_checkpoints
        if executor == "slurm":
            return _run_slurm(cells, records_path, out_dir, slurm or {}, device, keep)
        n = workers if workers is not None else _visible_gpus()
        if n > 1 and len(cells) > 1:
            return _run_parallel(cells, records_path, n, device, keep)
        return _run_sequential(cells, records_path, device, progress, keep)

    statuses = run(todo)
    total, ran = len(stage_cells), len(todo)
    if suite.tune is not None:
        finals, final_todo, final_already = _final_stage(
            suite, records_path, force, retry_failed, progress
        )
        write_suite_json(suite, out_dir, [*stage_cells, *finals])
        statuses += run(final_todo)
        total, ran, already = total + len(finals), ran + len(final_todo), already + final_already
    if report:
        from bench.results.report import write_report

        write_report(out_dir)
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return SweepSummary(out_dir, total, already, ran, counts, time.perf_counter() - started)


def _final_stage(
    suite: Suite, records_path: Path, force: bool, retry_failed: bool, progress: bool
) -> tuple[list[Cell], list[Cell], int]:
    """Select each grid point's tuning values from the tuning records, then the final cells:
    ``(all final cells selected so far, those to run now, those already recorded)``."""
    from bench.protocol import final_cells, select, selection_lines

    records = read_records(records_path).records if records_path.exists() else []
    selections = select(suite, records)
    if progress:
        for line in selection_lines(selections):
            print(f"tune: {line}", file=sys.stderr)
    finals = final_cells(suite, selections)
    todo, already = pending_cells(finals, records_path, force, retry_failed)
    return finals, todo, already


def _check_environment(
    todo: Sequence[Cell], records_path: Path, allow_mixed: bool
) -> dict[str, Any] | None:
    """This process's software environment, once it is known that appending its records will
    not mix stacks (None when there is nothing to run)."""
    if not todo:
        return None
    from bench.environment import capture, check_stack

    env = capture()
    existing = read_records(records_path).records if records_path.exists() else []
    check_stack(existing, env, records_path, allow_mixed)
    return env


def reproduce_command(suite: Suite, out_dir: Path) -> str:
    """The command that re-runs this sweep: the suite file, its overrides, the output folder."""
    parts = ["python -m bench run", str(_relative(suite.path)) if suite.path else "<suite>"]
    parts += [f"--set '{item}'" for item in suite.overrides]
    parts += ["--out", str(_relative(out_dir))]
    return " ".join(parts)


def _relative(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    try:
        return Path(path).resolve().relative_to(REPO)
    except ValueError:
        return Path(path)


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
    todo: Sequence[Cell],
    records_path: Path,
    device: str | None,
    show: bool,
    keep_checkpoints: bool = False,
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
        record = run_cell(
            cell,
            records_path,
            device,
            progress=step_progress if show else None,
            keep_checkpoint=keep_checkpoints,
        )
        statuses.append(record["status"])
        if record["status"] != "ok":
            bar.write(f"{record['status']}: {label}: {record.get('error')}", file=sys.stderr)
    return statuses


def _run_parallel(
    todo: Sequence[Cell],
    records_path: Path,
    n: int,
    device: str | None,
    keep_checkpoints: bool = False,
) -> list[str]:
    """One process per GPU (or per CPU worker), each running every n-th cell. A worker that
    dies leaves its unfinished cells recorded ``interrupted``."""
    import torch

    gpus = torch.cuda.is_available() and torch.cuda.device_count() >= n and device != "cpu"
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    print(f"running {len(todo)} cells on {n} {'GPU' if gpus else 'CPU'} workers", file=sys.stderr)
    ctx = get_context("spawn")
    statuses: list[str] = []
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        shares = [todo[i::n] for i in range(n)]
        futures = [
            pool.submit(
                _worker,
                share,
                records_path,
                f"cuda:{i}" if gpus else (device or "cpu"),
                threads,
                keep_checkpoints,
            )
            for i, share in enumerate(shares)
        ]
        for share, future in zip(shares, futures, strict=True):
            try:
                statuses += future.result()
            except BrokenProcessPool as err:
                reason = f"the worker process died before this cell ended ({err})"
                for cell in _without_final_record(share, records_path):
                    statuses.append(record_interrupted(cell, records_path, reason)["status"])
    return statuses


def slurm_time_limit_min(cells: Sequence[Cell], step_s: float) -> int:
    """A job's time limit from the longest cell's expected cost: steps x ``step_s`` with 50%
    headroom, plus 10 minutes for setup, evaluation and the non-private measurement."""
    longest = max(c.training.num_steps(_n_private(c)) for c in cells)
    return math.ceil(1.5 * longest * step_s / 60) + 10


def _n_private(cell: Cell) -> int:
    from bench.plan import data_size

    return data_size(cell.data).n_private


def measure_step_s(cell: Cell, device: str | None = None, steps: int = 2) -> float:
    """Seconds per DP-SGD step of ``cell``'s model at its batch, measured here on random data
    (a logical batch of B examples with K views each, split into physical batches as in the
    run). An upper bound for a faster cluster device; the estimate a time limit starts from."""
    import torch

    from bench.measure import resolve_device, synchronize
    from bench.plan import build_model, data_size
    from bench.seeds import stream
    from bench.sparsity import Sparsity
    from bench.train.setup import build_dp_step

    dev = resolve_device(device)
    size = data_size(cell.data)
    t = cell.training
    model = build_model(cell, size.num_classes, dev)
    # Pre-pruning and gradient dropping change the step's cost: time them too, with their
    # random methods (no public data here; a public choice adds its saliency every k steps).
    sparsity = Sparsity(
        model,
        prune=t.pre_prune and dataclasses.replace(t.pre_prune, method="random"),
        drop=t.grad_drop and dataclasses.replace(t.grad_drop, method="random"),
        streams=lambda purpose: stream(cell.seed, purpose, dev),
        public=None,
    )
    step = build_dp_step(
        model, t, noise_multiplier=1.0, max_grad_norm=cell.privacy.max_grad_norm, sparsity=sparsity
    )
    side = cell.data.image_size if cell.data.source == "synthetic" else 32
    x = torch.randn(t.batch_size, t.augmult, 3, side, side, device=dev)
    y = torch.randint(0, size.num_classes, (t.batch_size,), device=dev)
    step(x, y)  # warm-up
    synchronize(dev)
    started = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    synchronize(dev)
    return (time.perf_counter() - started) / steps


def _run_slurm(
    todo: Sequence[Cell],
    records_path: Path,
    out_dir: Path,
    params: dict[str, Any],
    device: str | None,
    keep_checkpoints: bool = False,
) -> list[str]:
    """Submit one checkpointable array job per cell with submitit and wait for them.

    A job that ends without a record of its own (a time limit or preemption that was not
    requeued, a lost node) is recorded ``interrupted``; one whose cell raised is ``failed``.
    """
    import submitit

    params = dict(params)
    cluster = params.pop("cluster", None)
    step_s = params.pop("step_s", None)
    if not todo:
        return []
    if "timeout_min" not in params:
        source = "given" if step_s is not None else "measured here"
        if step_s is None:
            distinct = {(c.backbone, c.norm, c.training): c for c in todo}.values()
            step_s = max(measure_step_s(c, device) for c in distinct)
        params["timeout_min"] = slurm_time_limit_min(todo, step_s)
        print(
            f"time limit {params['timeout_min']} min per job, from {step_s:.3g} s per step "
            f"({source}; --slurm-time-min overrides)",
            file=sys.stderr,
        )
    executor = submitit.AutoExecutor(folder=out_dir / "submitit", cluster=cluster)
    executor.update_parameters(name=f"dpnb-{out_dir.name}", **params)
    job_fn = SlurmCellJob()
    n = len(todo)
    jobs = executor.map_array(
        job_fn, list(todo), [str(records_path)] * n, [device] * n, [keep_checkpoints] * n
    )
    print(f"submitted {len(jobs)} jobs ({jobs[0].job_id.split('_')[0]}); waiting", file=sys.stderr)
    statuses = []
    for job, cell in zip(jobs, todo, strict=True):
        try:
            statuses.append(job.result())
        except submitit.core.utils.FailedJobError as err:
            reason = f"the job raised: {str(err).strip().splitlines()[-1]}"
            statuses.append(_record_job_end(cell, records_path, "failed", reason))
        except Exception as err:  # the job ended without finishing its cell
            reason = f"job {job.job_id} ended without a record: {type(err).__name__}: {err}"
            statuses.append(_record_job_end(cell, records_path, "interrupted", reason))
    return statuses


def _record_job_end(cell: Cell, records_path: Path, status: str, reason: str) -> str:
    """Record how a job ended when the job itself left no final record; print it."""
    if not _without_final_record([cell], records_path):  # it recorded itself, then ended
        newest = {r["run_key"]: r for r in read_records(records_path).records}
        return newest[cell.run_key]["status"]
    print(f"{status}: {cell_label(cell)}: {reason.splitlines()[0]}", file=sys.stderr)
    return record_interrupted(cell, records_path, reason, status)["status"]
