"""What every GPU-report part shares: its sizes and time boxes, its run state, its helpers."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.perf.kinds import measure_one


@dataclass(frozen=True)
class Sizes:
    """How large the report's measurements are.

    Attributes:
        name: ``full`` (a GPU) or ``tiny`` (CPU and CI).
        width: Backbone width multiplier of the table, max-batch and bf16 parts.
        image: Image side, pixels.
        table_batch: Physical batch of the table and bf16 parts (one physical batch a step).
        warmup: Untimed steps before the timed ones.
        reps: Timed steps (the median is reported).
        backbones: The table's backbones.
        max_batch_start: First batch the max-batch search tries; it doubles from there.
        max_batch_cap: The search stops there (reported as "at least").
        cpu_mem_budget_bytes: On the CPU, "fits" means a tensor peak below this.
        pipeline_batch: Expected batch of the engine-vs-Opacus comparison.
        pipeline_steps: Its timed steps per loop.
        pipeline_warmup: Its untimed steps per loop.
        pipeline_examples: Training-set size it samples from.
        pipeline_workers: DataLoader workers of Opacus' tutorial loop.
        recipe_width: Width of the full-recipe models (1.0: the suite's own).
        recipe_image: Image side of the full-recipe step.
        recipe_physical: Physical batch of the full-recipe step (None: the suite's).
        recipe_views: Augmentation multiplicity (None: the suite's).
        recipe_reps: Timed steps per point of the full-recipe fit.
        pytest_args: What the tests part passes to pytest.
        budgets_s: Each part's time box, seconds.
    """

    name: str
    width: float
    image: int
    table_batch: int
    warmup: int
    reps: int
    backbones: tuple[str, ...]
    max_batch_start: int
    max_batch_cap: int
    cpu_mem_budget_bytes: int
    pipeline_batch: int
    pipeline_steps: int
    pipeline_warmup: int
    pipeline_examples: int
    pipeline_workers: int
    recipe_width: float
    recipe_image: int
    recipe_physical: int | None
    recipe_views: int | None
    recipe_reps: int
    pytest_args: tuple[str, ...]
    budgets_s: dict[str, float] = field(default_factory=dict)


FULL = Sizes(
    name="full",
    width=1.0,
    image=32,
    table_batch=512,
    warmup=2,
    reps=3,
    backbones=("wrn16_4", "resnet9"),
    max_batch_start=512,
    max_batch_cap=32768,
    cpu_mem_budget_bytes=0,
    pipeline_batch=512,
    pipeline_steps=10,
    pipeline_warmup=3,
    pipeline_examples=50_000,
    pipeline_workers=min(8, os.cpu_count() or 1),
    recipe_width=1.0,
    recipe_image=32,
    recipe_physical=None,
    recipe_views=None,
    recipe_reps=2,
    pytest_args=("-m", "gpu"),
    budgets_s={
        "tests": 150,
        "table": 140,
        "max_batch": 50,
        "pipeline": 35,
        "bf16": 20,
        "recipe": 50,
    },
)

TINY = Sizes(
    name="tiny",
    width=0.125,
    image=16,
    table_batch=4,
    warmup=0,
    reps=1,
    backbones=("wrn16_4", "resnet9"),
    max_batch_start=4,
    max_batch_cap=32,
    cpu_mem_budget_bytes=4 << 20,
    pipeline_batch=8,
    pipeline_steps=1,
    pipeline_warmup=1,
    pipeline_examples=64,
    pipeline_workers=0,
    recipe_width=0.125,
    recipe_image=16,
    recipe_physical=2,
    recipe_views=2,
    recipe_reps=1,
    pytest_args=("-m", "gpu", "tests/test_gpu.py"),
    # A part always makes its first measurement; the rest fill what the box leaves.
    budgets_s={
        "tests": 30,
        "table": 6,
        "max_batch": 3,
        "pipeline": 10,
        "bf16": 4,
        "recipe": 4,
    },
)

SIZES = {s.name: s for s in (FULL, TINY)}


@dataclass
class PartRun:
    """One part while it runs: its inputs, its deadline and what it has measured so far.

    ``data`` holds only JSON values, so that an isolated part's results survive its process
    (`save` writes them after every measurement).
    """

    name: str
    sizes: Sizes
    device: torch.device
    deadline: float
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    save: Callable[[], None] = lambda: None
    count: int = 0

    def measured(self) -> None:
        """One more measurement is in ``data``: save it."""
        self.count += 1
        self.save()

    def expired(self) -> bool:
        """Past the deadline, once something was measured: every part makes at least its
        first measurement, however little of its time box an isolated part's start-up left."""
        return self.count > 0 and time.time() >= self.deadline

    def left_s(self) -> float:
        """Seconds left before the deadline (0 once past it)."""
        return max(0.0, self.deadline - time.time())


def free_memory(device: torch.device) -> None:
    """Release what the last measurement held, so that the next one starts from the same state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_line(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


def time_step(
    run: PartRun, backbone: str, norm: str, kind: str, precision: str = "fp32"
) -> dict[str, Any]:
    """One `measure_one` at the part's table sizes (`Sizes.table_batch`, `width`, `image`,
    `warmup`, `reps`), memory freed afterwards.

    Returns:
        ``seconds``, ``mem_bytes`` and ``mem_measure``; or ``error``, the failure's line.
    """
    s = run.sizes
    sizes = {
        "batch": s.table_batch,
        "width": s.width,
        "size": s.image,
        "warmup": s.warmup,
        "reps": s.reps,
    }
    try:
        r = measure_one(backbone, norm, kind, **sizes, precision=precision, device=run.device)
        return {k: r[k] for k in ("seconds", "mem_bytes", "mem_measure")}
    except Exception as err:  # one cell's failure (e.g. out of memory) is that cell's
        return {"error": error_line(err)}
    finally:
        free_memory(run.device)
