"""Killing a tiny cell's training at a step and comparing its record with an uninterrupted one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._pytree import tree_flatten

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


def overwrite_mid_tensor(path: Path, state: dict) -> None:
    """Overwrite 16 bytes in the middle of the largest tensor of ``state`` where ``path``
    stores it (tensors are stored uncompressed), as a bad disk or a stray write would."""
    tensors = [t for t in tree_flatten(state)[0] if isinstance(t, torch.Tensor)]
    raw = max(tensors, key=lambda t: t.numel() * t.element_size()).cpu().numpy().tobytes()
    data = bytearray(path.read_bytes())
    start = data.find(raw)
    assert start >= 0 and len(raw) >= 64, "the tensor's bytes are not in the file"
    middle = start + len(raw) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
