"""The ``slurm`` executor: a checkpointable submitit job per cell, time limits from step timing."""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import submitit
import torch

from bench.config import Cell
from bench.errors import ExecutorError
from bench.measure import resolve_device, synchronize
from bench.plan import build_model, cell_label, data_size
from bench.seeds import stream
from bench.sparsity import Sparsity
from bench.sweep.cell import record_interrupted, run_cell
from bench.sweep.executor import Executor
from bench.sweep.resume import newest_statuses, without_final_record
from bench.train.ranks import busiest_share
from bench.train.setup import build_dp_step

#: ``slurm.cluster`` values that emulate the cluster on this machine (submitit's executors).
LOCAL_CLUSTERS = ("local", "debug")


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
        if _job_tasks() > 1:  # one cell over the job's tasks
            # submitit's helper sets the env:// variables from SLURM's: no rendezvous of our own
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return run_cell(cell, Path(records_path), device, keep_checkpoint=keep_checkpoint)["status"]

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _job_tasks() -> int:
    """Tasks of the submitit job this runs in; 1 outside one (a direct call, a test)."""
    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:  # submitit knows no job environment here
        return 1


def slurm_time_limit_min(cells: Sequence[Cell], step_s: float, world: int = 1) -> int:
    """A job's time limit from the longest cell's expected cost: steps x ``step_s`` (one
    process's step) with 50% headroom, plus 10 minutes for setup, evaluation and the
    non-private measurement. On ``world`` processes per cell a step takes the busiest rank's
    share of it (ideal scaling over whole physical batches, `bench.train.ranks.busiest_share`);
    a cell that outlives the limit is requeued and resumes from its checkpoint."""
    longest = max(c.training.num_steps(_n_private(c)) * _rank_share(c, world) for c in cells)
    return math.ceil(1.5 * longest * step_s / 60) + 10


def _rank_share(cell: Cell, world: int) -> float:
    """The share of ``cell``'s expected logical batch the busiest of ``world`` ranks clips."""
    t = cell.training
    return busiest_share(t.batch_size, t.max_physical_batch, world)


def _n_private(cell: Cell) -> int:
    return data_size(cell.data).n_private


def measure_step_s(cell: Cell, device: str | None = None, steps: int = 2) -> float:
    """Seconds per DP-SGD step of ``cell``'s model at its batch, measured here on random data
    (a logical batch of B examples with K views each, split into physical batches as in the
    run). An upper bound for a faster cluster device; the estimate a time limit starts from."""
    dev = resolve_device(device)
    size = data_size(cell.data)
    t = cell.training
    model = build_model(cell, size.num_classes, dev, in_chans=size.channels)
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
    side = size.image_size or 32  # a folder of images declares no size: CIFAR's
    x = torch.randn(t.batch_size, t.augmult, size.channels, side, side, device=dev)
    y = torch.randint(0, size.num_classes, (t.batch_size,), device=dev)
    step(x, y)  # warm-up
    synchronize(dev)
    started = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    synchronize(dev)
    return (time.perf_counter() - started) / steps


class SlurmExecutor(Executor):
    """One checkpointable array job per cell, every job appending to the same records file
    under a file lock; waits for them all.

    A job that ends without a record of its own (a time limit or preemption that was not
    requeued, a lost node) is recorded ``interrupted``; one whose cell raised is ``failed``.
    """

    def check(self) -> None:
        """Refuse a machine without SLURM (no ``sbatch``), unless the options ask for local
        emulation (`LOCAL_CLUSTERS`).

        Raises:
            ExecutorError: SLURM is not available here.
        """
        if self.options.slurm.cluster in LOCAL_CLUSTERS:
            return
        if shutil.which("sbatch") is None:
            raise ExecutorError(
                "--executor slurm: SLURM is not available on this machine (no sbatch on PATH), "
                "so nothing was submitted; to test a sweep's cluster path here, add "
                "--slurm-cluster local"
            )

    def run(self, cells: Sequence[Cell]) -> list[str]:
        if not cells:
            return []
        params = self.options.slurm.submitit_parameters()
        if "timeout_min" not in params:
            params["timeout_min"] = self._time_limit_min(cells)
        executor = submitit.AutoExecutor(
            folder=self.out_dir / "submitit", cluster=self.options.slurm.cluster
        )
        executor.update_parameters(name=f"dpnb-{self.out_dir.name}", **params)
        if self.options.slurm.world_size > 1:
            print(
                f"each cell on {self.options.slurm.nodes} node(s) x "
                f"{self.options.slurm.tasks_per_node} task(s)",
                file=sys.stderr,
            )
        n = len(cells)
        jobs = executor.map_array(
            SlurmCellJob(),
            list(cells),
            [str(self.records_path)] * n,
            [self.options.device] * n,
            [self.options.keep_checkpoints] * n,
        )
        print(
            f"submitted {len(jobs)} jobs ({jobs[0].job_id.split('_')[0]}); waiting", file=sys.stderr
        )
        statuses = []
        for job, cell in zip(jobs, cells, strict=True):
            try:
                result = job.result()  # a job of several tasks gives one result per task
                statuses.append(result[0] if isinstance(result, list) else result)
            except submitit.core.utils.FailedJobError as err:
                reason = f"the job raised: {str(err).strip().splitlines()[-1]}"
                statuses.append(self._record_job_end(cell, "failed", reason))
            except Exception as err:  # the job ended without finishing its cell
                reason = f"job {job.job_id} ended without a record: {type(err).__name__}: {err}"
                statuses.append(self._record_job_end(cell, "interrupted", reason))
        return statuses

    def _time_limit_min(self, cells: Sequence[Cell]) -> int:
        """The time limit when none is given, from the given or measured seconds per step."""
        step_s = self.options.slurm.step_s
        source = "given" if step_s is not None else "measured here"
        if step_s is None:
            distinct = {(c.backbone, c.norm, c.training): c for c in cells}.values()
            step_s = max(measure_step_s(c, self.options.device) for c in distinct)
        world = self.options.slurm.world_size
        limit = slurm_time_limit_min(cells, step_s, world)
        scaled = (
            f", on {world} processes per cell assuming ideal scaling over whole physical batches"
            if world > 1
            else ""
        )
        print(
            f"time limit {limit} min per job, from {step_s:.3g} s per step on one process "
            f"({source}{scaled}; --slurm-time-min overrides)",
            file=sys.stderr,
        )
        return limit

    def _record_job_end(self, cell: Cell, status: str, reason: str) -> str:
        """Record how a job ended when the job itself left no final record; print it."""
        if not without_final_record([cell], self.records_path):  # it recorded itself, then ended
            return newest_statuses(self.records_path)[cell.run_key]
        print(f"{status}: {cell_label(cell)}: {reason.splitlines()[0]}", file=sys.stderr)
        return record_interrupted(cell, self.records_path, reason, status)["status"]
