"""The local executors: cells in order in this process, or one worker process per GPU."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.config import Cell
from bench.errors import ConfigError
from bench.measure import resolve_device
from bench.plan import cell_label
from bench.sweep.cell import record_interrupted, run_cell
from bench.sweep.executor import Executor
from bench.sweep.options import RunOptions
from bench.sweep.processes import check_nproc, launched_ranks, start_method
from bench.sweep.resume import without_final_record
from bench.train.loop import StepReport


class _StepProgress:
    """Shows the current cell's steps, throughput and epsilon spent on the sweep's bar, at most
    once a second; the un-noised loss only with ``training.log_private_loss`` (stderr is often
    a log file that outlives the run).

    The throughput is steps per second times the images a step is expected to train on (b = q N
    examples, ``augmult`` views each), as the record counts them: the size of the batch drawn
    is a function of the private data, so it is not shown.
    """

    def __init__(self, bar: Any, label: str) -> None:
        self.bar, self.label, self.last = bar, label, 0.0
        self.start: tuple[float, int] | None = None

    def __call__(self, report: StepReport) -> None:
        now = time.perf_counter()
        if self.start is None:  # the first step includes set-up: time from its end
            self.start = (now, report.step)
        if now - self.last > 1.0 or report.step == report.steps:
            t0, s0 = self.start
            rate = (report.step - s0) * report.expected_images / (now - t0) if now > t0 else 0.0
            text = (
                f"{self.label} | step {report.step}/{report.steps} | {rate:.0f} img/s"
                f" | eps {report.epsilon():.3g} {report.budget}"
            )
            if report.private_loss is not None:
                text += f" | loss {report.private_loss:.3f} (not DP)"
            self.bar.set_postfix_str(text)
            self.last = now


class SequentialExecutor(Executor):
    """One cell after the other in this process, under a progress bar."""

    def run(self, cells: Sequence[Cell]) -> list[str]:
        show = self.options.progress
        statuses = []
        bar = tqdm(
            cells,
            desc="cells",
            unit="cell",
            disable=not show or not cells,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        for cell in bar:
            label = cell_label(cell)
            bar.set_postfix_str(label)
            record = run_cell(
                cell,
                self.records_path,
                self.options.device,
                progress=_StepProgress(bar, label) if show else None,
                keep_checkpoint=self.options.keep_checkpoints,
                nproc=self.options.nproc,
                timeout_s=self.options.collective_timeout_s,
                recorded_before=self.recorded_before(cell),
            )
            statuses.append(record["status"])
            if record["status"] != "ok":
                bar.write(f"{record['status']}: {label}: {record.get('error')}", file=sys.stderr)
        return statuses


def _worker(
    cells: Sequence[Cell],
    records_path: Path,
    device: str | None,
    threads: int | None,
    keep_checkpoints: bool = False,
    recorded_before: Sequence[int | None] | None = None,
) -> list[str]:
    """A worker process: run its share of the cells in order; returns their statuses."""
    if threads:
        torch.set_num_threads(threads)
    before = recorded_before or [None] * len(cells)
    return [
        run_cell(c, records_path, device, keep_checkpoint=keep_checkpoints, recorded_before=n)[
            "status"
        ]
        for c, n in zip(cells, before, strict=True)
    ]


class WorkerPoolExecutor(Executor):
    """``workers`` processes (one per GPU when there are enough, else CPU workers sharing the
    cores), each running every n-th cell. A worker that dies leaves its unfinished cells
    recorded ``interrupted``."""

    def run(self, cells: Sequence[Cell]) -> list[str]:
        n, gpus = pool_shape(self.options, len(cells))
        device = self.options.device
        threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
        kind = "GPU" if gpus else "CPU"
        print(f"running {len(cells)} cells on {n} {kind} workers", file=sys.stderr)
        statuses: list[str] = []
        places = [f"cuda:{i}" if gpus else (device or "cpu") for i in range(n)]
        # Workers sharing the cores may still train on a GPU (``--device cuda``, more workers
        # than GPUs): the start method follows where they train, not how many GPUs there are.
        how = start_method(torch.device(places[0]))
        with ProcessPoolExecutor(max_workers=n, mp_context=get_context(how)) as pool:
            shares = [cells[i::n] for i in range(n)]
            futures = [
                pool.submit(
                    _worker,
                    share,
                    self.records_path,
                    places[i],
                    threads,
                    self.options.keep_checkpoints,
                    [self.recorded_before(c) for c in share],
                )
                for i, share in enumerate(shares)
            ]
            for share, future in zip(shares, futures, strict=True):
                try:
                    statuses += future.result()
                except BrokenProcessPool as err:
                    reason = f"the worker process died before this cell ended ({err})"
                    for cell in without_final_record(share, self.records_path):
                        statuses.append(
                            record_interrupted(cell, self.records_path, reason)["status"]
                        )
        return statuses


class LocalExecutor(Executor):
    """``local``: a worker pool when there are several workers (one per visible GPU by default)
    and several cells, else the cells in order in this process; with ``nproc`` > 1, the cells
    in order, each on ``nproc`` processes."""

    def check(self) -> None:
        """Refuse ``nproc`` beyond the devices here, or with several workers, in one line."""
        if self.options.nproc == 1:
            return
        check_nproc(self.options.nproc, resolve_device(self.options.device))
        if self.options.workers not in (None, 1):
            raise ConfigError(
                f"--nproc {self.options.nproc} runs each cell on every process; "
                f"--workers {self.options.workers} cannot be combined with it"
            )

    def run(self, cells: Sequence[Cell]) -> list[str]:
        several = pool_shape(self.options, len(cells))[0] > 1
        chosen = WorkerPoolExecutor if several else SequentialExecutor
        return chosen(self.options, self.out_dir).run(cells)


def pool_shape(options: RunOptions, cells: int) -> tuple[int, bool]:
    """How the ``local`` executor runs ``cells`` cells: ``(cells at once, whether each
    worker has a GPU of its own)``; ``(1, True)`` for the cells in order in this process.
    Without a GPU each, the workers share the CPU cores."""
    n = worker_count(options)
    if n <= 1 or cells <= 1 or options.nproc != 1:
        return 1, True
    gpus = torch.cuda.is_available() and torch.cuda.device_count() >= n
    return n, gpus and options.device != "cpu"


def worker_count(options: RunOptions) -> int:
    """``options.workers``, or one per visible CUDA device (one without CUDA); one when each
    cell takes ``nproc`` > 1 processes."""
    if options.workers is not None:
        return options.workers
    if options.nproc > 1 or launched_ranks().distributed:
        return 1
    return torch.cuda.device_count() if torch.cuda.is_available() else 1
