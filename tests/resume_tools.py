"""Killing a tiny cell's training at a step and comparing its record with an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.config import Cell
from bench.suite import load_suite
from bench.train.loop import StepReport
from tests.tiny_suite import TINY

#: Fields that measure time, the machine or the process, and so differ between two runs.
TIMING = {
    "throughput_img_s",
    "throughput_rel_se",
    "throughput_timed_steps",
    "dp_nonprivate_throughput_ratio",
    "peak_rss_bytes",
    "train_wall_s",
    "wall_s",
    "provenance",
    "resumed_from_step",
}


class Killed(Exception):
    """Stands for SIGKILL or a preemption at a given step."""


def kill_at(step: int, error: type[BaseException] = Killed) -> Callable[[StepReport], None]:
    """A progress callback that raises ``error`` once ``step`` steps are done."""

    def progress(report: StepReport) -> None:
        if report.step == step:
            raise error(report.step)

    return progress


def cell(tmp_path: Path, *overrides: str) -> Cell:
    """The tiny suite's group_norm seed-0 cell: 5 steps, checkpoints every 2, ``overrides``."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    base = ["grid.seed=[0]", "grid.norm=[group_norm]", "training.steps=5"]
    base += ["training.checkpoint_every=2", "training.measure_nonprivate=false"]
    (c,) = load_suite(suite, [*base, *overrides]).cells()
    return c


def comparable(record: dict) -> dict:
    """``record`` without the fields that differ between two runs of the same cell."""
    return {k: v for k, v in record.items() if k not in TIMING}
