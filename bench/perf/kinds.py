"""The steps a perf measurement times: non-private, book-keeping DP, Opacus hooks, Opacus ghost.

Every kind is built the same way (same model, seed, optimiser, batch; noise multiplier 1,
clip 1) by `make_step`, and timed the same way by `measure_one`: the median of ``reps`` steps
after ``warmup`` steps, each step between two device synchronisations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import norms
from bench.backbones import create_backbone
from bench.config import TrainingConfig
from bench.data import Dataset, DeviceData
from bench.measure import (
    peak_memory,
    process_peak_rss,
    reset_peak_memory,
    resolve_device,
    synchronize,
    tensor_peak_bytes,
)
from bench.provenance import device_name
from bench.train.setup import GHOST, build_dp_step, build_sgd_step
from norms.lifecycle import synthetic_run_data

#: What `make_step` builds: ``nonprivate`` (plain SGD), ``dp`` (the engine's default
#: book-keeping clipper), ``dp-opacus-hooks`` (Opacus' per-sample-gradient hooks) and
#: ``dp-opacus-ghost`` (Opacus' fast gradient clipping, `bench.train.ghost.OpacusGhostStep`).
KINDS = ("nonprivate", "dp", "dp-opacus-hooks", "dp-opacus-ghost")
#: The per-sample-gradient mode of each DP kind (`bench.train.setup.build_dp_step`).
_MODES = {"dp": "bk", "dp-opacus-hooks": "hooks", "dp-opacus-ghost": GHOST}
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def random_device_data(n: int, device: torch.device, size: int = 32) -> DeviceData:
    """A CIFAR-shaped set of ``n`` random uint8 images (``size`` pixels a side) on ``device``,
    for timing the data path."""
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    dataset = Dataset(
        name="random",
        train_x=u8,
        train_y=labels,
        test_x=u8[:8],
        test_y=labels[:8],
        public_x=None,
        public_y=None,
        num_classes=10,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    return DeviceData(dataset, device)


def prepare_for_timing(model: nn.Module, norm: str, size: int, device: torch.device) -> None:
    """Run the norm's preparation hook (statistics) on random images: timing needs a prepared
    model, not meaningful statistics."""
    norms.resolve_norm(norm).prepare(model, synthetic_run_data((3, size, size), device=device))


def make_step(
    backbone: str,
    norm: str,
    kind: str,
    *,
    batch: int,
    width: float = 1.0,
    size: int = 32,
    device: torch.device | None = None,
    precision: str = "fp32",
    max_physical_batch: int | None = None,
    views: int = 1,
):
    """A ready step and a fixed batch: ``(step, x, y)`` with x of shape (batch, views, 3, size,
    size), split into physical batches of ``max_physical_batch`` examples (default: one).

    ``kind``: one of `KINDS`; noise multiplier 1, clip 1, expected batch ``batch``; SGD at
    learning rate 0.1, built by the builders a run uses (`bench.train.setup`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    device = device or resolve_device()
    physical = max_physical_batch or batch
    torch.manual_seed(0)
    model = create_backbone(backbone, norm=norm, width=width).to(device)
    prepare_for_timing(model, norm, size, device)
    model.train()
    training = TrainingConfig(
        batch_size=batch, max_physical_batch=physical, lr=0.1, precision=precision
    )
    if kind == "nonprivate":
        step: Any = build_sgd_step(model, training)
    else:
        step = build_dp_step(
            model, training, noise_multiplier=1.0, max_grad_norm=1.0, mode=_MODES[kind]
        )
    x = torch.randn(batch, views, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return step, x, y


def _timed_steps(
    step: Callable[[], object], warmup: int, reps: int, device: torch.device
) -> tuple[list[float], float]:
    """Seconds of each of ``reps`` steps, each between two device synchronisations, after
    ``warmup`` untimed steps; and the process's CPU share over the timed steps."""
    for _ in range(warmup):
        step()
    times = []
    cpu0 = time.process_time()
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    # CPU seconds this process got per wall second and thread over the timed steps: about 1 on
    # an idle CPU, lower when other processes share its cores (a GPU step idles the CPU).
    cpu_share = (time.process_time() - cpu0) / max(sum(times), 1e-9) / torch.get_num_threads()
    return times, cpu_share


def measure_one(
    backbone: str,
    norm: str,
    kind: str,
    *,
    batch: int,
    width: float,
    size: int,
    warmup: int,
    reps: int,
    precision: str = "fp32",
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Median step time and peak memory of one configuration, in this process.

    Timed: each of ``reps`` steps between two device synchronisations, after ``warmup``
    untimed steps; setup (model, preparation, batch) is excluded. Memory: on a GPU, CUDA's
    allocator peak over every step above what was allocated after setup; on the CPU, the
    tensor peak of one more, untimed step (`bench.measure.TensorPeak`). ``rss_bytes`` is the
    growth of the process's peak resident set over the steps: a per-measurement figure only
    when the process measured nothing before (``python -m bench.perf one``). ``cpu_share``:
    process CPU time over the timed steps per wall second and torch thread, about 1 when the
    CPU was this process's alone and lower when others shared it.
    """
    device = device or resolve_device()
    step, x, y = make_step(
        backbone,
        norm,
        kind,
        batch=batch,
        width=width,
        size=size,
        device=device,
        precision=precision,
    )
    # The step's own memory: peak above what the model, data and batch hold after setup,
    # measured from before the first step (its peak is the one that matters).
    synchronize(device)
    rss_before = process_peak_rss()
    reset_peak_memory(device)
    allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    times, cpu_share = _timed_steps(lambda: step(x, y), warmup, reps, device)
    peak = peak_memory(device)
    rss_growth = process_peak_rss() - rss_before
    if peak is not None:
        step_mem = peak - allocated_before
        mem_measure = "cuda max_memory_allocated above the memory allocated after setup"
    else:  # one more, untimed step with every tensor allocation tracked
        step_mem = tensor_peak_bytes(lambda: step(x, y))
        mem_measure = "peak bytes of tensors the step allocated and held (bench.measure.TensorPeak)"
    return {
        "backbone": backbone,
        "norm": norm,
        "kind": kind,
        "batch": batch,
        "width": width,
        "precision": precision,
        "seconds": statistics.median(times),
        "mem_bytes": step_mem,
        "mem_measure": mem_measure,
        # The process's peak RSS growth over the timed steps: allocator caching and
        # fragmentation included, so noisier than mem_bytes.
        "rss_bytes": rss_growth,
        "cpu_share": cpu_share,
        "device": device_name(device),
    }
