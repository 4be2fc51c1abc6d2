"""Running one cell: its record (whatever the outcome), its checkpoints, an interrupted end."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import checkpoint, predictions, saved_model
from bench.config import Cell, cell_to_dict
from bench.errors import BenchError
from bench.measure import resolve_device
from bench.provenance import record_provenance
from bench.results.records import append_record
from bench.sweep import processes
from bench.sweep.lock import cell_lock
from bench.sweep.outputs import checkpoint_dir
from bench.sweep.resume import record_count
from bench.train import cell as training
from bench.train.loop import Diverged, Progress


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
        "divergence_check": cell.training.divergence_check,
        "config": d,
    }


#: The status `run_cell` returns, with no record written, for a cell another process runs or
#: has recorded since this sweep chose it (not a record's ``skipped``: nothing is recorded).
ELSEWHERE = "run elsewhere"


def run_cell(
    cell: Cell,
    records_path: Path,
    device: str | None = None,
    progress: Progress | None = None,
    keep_checkpoint: bool = False,
    nproc: int = 1,
    timeout_s: float = processes.DEFAULT_TIMEOUT_S,
    recorded_before: int | None = None,
) -> dict[str, Any]:
    """Run one cell under its lock (`bench.sweep.lock`) and append its record, unless another
    process holds the lock, or has recorded the cell since the sweep chose it: then nothing
    is written and the returned record's status is `ELSEWHERE`, with the reason as its error.

    Under a launcher (torchrun, a SLURM job of several tasks) every rank runs the cell
    together: rank 0 takes the lock (and checks the records) for all of them and every rank
    does what it found, so two launched sweeps sharing one folder do not run a cell twice.

    Args:
        cell: The cell to run.
        records_path: The records file the record is appended to.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...; None: auto.
        progress: Called with a `bench.train.loop.StepReport` after each step.
        keep_checkpoint: Keep the run's last checkpoint after its record is written.
        nproc: Processes the cell runs on (`bench.sweep.processes`); a lost one makes the
            record ``interrupted``.
        timeout_s: Seconds a collective of a multi-process cell waits for the other ranks.
        recorded_before: How many records the cell had when the sweep chose to run it; when
            the records file holds more once the lock is held, another process ran it. None:
            not checked.

    Returns:
        The record appended, or the skipped cell's.
    """
    run = (cell, records_path, device, progress, keep_checkpoint, nproc, timeout_s)
    ranks = processes.launched_ranks(timeout_s)
    # Launched ranks run the cell together: rank 0 holds the lock for them all.
    lock = cell_lock(records_path, cell.run_key) if ranks.writer else contextlib.nullcontext()
    with lock as holder:
        reason = None
        if holder is not None:
            reason = f"another process ({holder}) is running this cell into the same folder"
        elif (
            ranks.writer
            and recorded_before is not None
            and record_count(records_path, cell.run_key) > recorded_before
        ):
            reason = "another process recorded this cell after this sweep chose to run it"
        reason = ranks.from_writer(reason)  # every rank does as rank 0 found
        if reason is None:
            return _run_cell(*run)
    return {"run_key": cell.run_key, "status": ELSEWHERE, "error": reason}


def _run_cell(
    cell: Cell,
    records_path: Path,
    device: str | None = None,
    progress: Progress | None = None,
    keep_checkpoint: bool = False,
    nproc: int = 1,
    timeout_s: float = processes.DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Run one cell and append its record (`run_cell` without the lock; the same arguments);
    a failure is recorded, not raised.

    ``KeyboardInterrupt`` and user errors (`BenchError`, e.g. unreadable data) propagate with
    no record written: the cell did not run, and a re-run will try it again.

    The run checkpoints under ``<records folder>/checkpoints/<run_key>/`` and resumes from
    there (a requeued SLURM job, a re-run after a kill); the checkpoint is deleted once the
    record is written, unless ``keep_checkpoint``. ``training.save_model`` weights go to
    ``<records folder>/models/`` (`bench.saved_model`).
    """
    dev = resolve_device(device)
    ranks = processes.launched_ranks(timeout_s)  # torchrun or a SLURM job of several tasks
    if ranks.distributed:
        dev = processes.launched_device(dev)
    started = time.perf_counter()
    base = _base_record(cell)
    try:
        folders = {
            "checkpoint_dir": checkpoint_dir(records_path),
            "model_dir": records_path.parent / saved_model.FOLDER,
            "predictions_dir": records_path.parent / predictions.FOLDER,
        }
        if nproc > 1:
            measured = processes.train_cell_on(nproc, cell, dev, timeout_s=timeout_s, **folders)
        else:  # through the module, so that tests can stand in for the training of a cell
            shown = progress if ranks.writer else None
            measured = training.train_cell(cell, dev, progress=shown, ranks=ranks, **folders)
        # A launched rank other than 0 returns nothing: rank 0 records the cell.
        record = {**base, **(measured or {"status": "ok"})}
    except (KeyboardInterrupt, BenchError):
        raise
    except processes.RankLost as err:
        record = {**base, "status": "interrupted", "error": str(err)}
    except torch.cuda.OutOfMemoryError as err:
        record = {**base, "status": "failed", "error": f"out of memory: {err}".splitlines()[0]}
    except Diverged as err:
        record = {
            **base,
            "status": "failed",
            "error": str(err),
            "diverged": True,
            "nonprivate_diagnostics": list(err.nonprivate),
        }
    except Exception as err:
        record = {
            **base,
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=-8),
        }
    if record["status"] != "ok":
        prov = record_provenance(dev)
        record.update(
            provenance=prov, device=prov["device_name"], wall_s=time.perf_counter() - started
        )
    if not ranks.writer:
        return record
    append_record(records_path, record)
    if not keep_checkpoint:
        checkpoint.remove(checkpoint.checkpoint_path(checkpoint_dir(records_path), cell.run_key))
    return record


def record_interrupted(
    cell: Cell, records_path: Path, reason: str, status: str = "interrupted"
) -> dict[str, Any]:
    """Append the record of a run that ended without recording itself.

    Args:
        cell: The cell whose run ended.
        records_path: The records file.
        reason: Why it ended, as the record's ``error``.
        status: ``interrupted`` when the infrastructure ended it, ``failed`` when it raised
            where no record could be written.

    Returns:
        The record appended.
    """
    record = {**_base_record(cell), "status": status, "error": reason, "wall_s": None}
    append_record(records_path, record)
    return record


def discard_checkpoints(cells: Sequence[Cell], records_path: Path) -> int:
    """Delete the checkpoints of ``cells``, so that a forced run starts from step 0.

    Returns:
        How many there were.
    """
    paths = [checkpoint.checkpoint_path(checkpoint_dir(records_path), c.run_key) for c in cells]
    found = sum(p.exists() for p in paths)
    for path in paths:
        checkpoint.remove(path)
    return found
