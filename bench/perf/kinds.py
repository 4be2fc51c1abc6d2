"""The steps a perf measurement times: non-private, book-keeping DP, Opacus hooks, Opacus ghost.

Every kind is built the same way (same model, seed, optimiser, batch; noise multiplier 1,
clip 1) by `make_step`, and timed the same way by `measure_one`: the median of ``reps`` steps
after ``warmup`` steps, each step between two device synchronisations.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch import nn

import norms
from bench.backbones import create_backbone
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
from bkclip import DPSGDStep, SGDStep, make_optimizer
from norms.lifecycle import synthetic_run_data

#: What `make_step` builds: ``nonprivate`` (plain SGD), ``dp`` (the engine's default
#: book-keeping clipper), ``dp-opacus-hooks`` (Opacus' per-sample-gradient hooks) and
#: ``dp-opacus-ghost`` (Opacus' fast gradient clipping, `OpacusGhostStep`).
KINDS = ("nonprivate", "dp", "dp-opacus-hooks", "dp-opacus-ghost")
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


class OpacusGhostStep:
    """A DP-SGD step through Opacus' fast gradient clipping (``grad_sample_mode="ghost"``).

    The three objects ``PrivacyEngine.make_private(..., grad_sample_mode="ghost")`` builds,
    without its data loader: `GradSampleModuleFastGradientClipping` computes each example's
    gradient norm per layer (ghost norms where Opacus has a norm sampler, ``nn.Linear`` here;
    every other layer's per-example gradients materialised by its grad sampler and reduced to
    norms at once), `DPLossFastGradientClipping` runs the two backward passes (the first for
    the norms, the second for the sum of clipped gradients, each example's loss weighted by
    min(1, C / norm)), and `DPOptimizerFastGradientClipping` adds the noise, scales by the
    expected batch and updates. A logical batch is split into physical batches as the
    engine's steps split it (Opacus' skip-step accumulation).

    Opacus clips per image, so augmentation multiplicity (K views sharing one clipped
    gradient) has no equivalent here: only one view per example is accepted. Only fp32: in bf16
    Opacus would take norms in bf16, which the engine's steps refuse to do (the clipped
    gradient can overshoot C).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        max_physical_batch: int,
        precision: str = "fp32",
        generator: torch.Generator | None = None,
    ):
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        if precision != "fp32":
            raise ValueError(f"dp-opacus-ghost runs in fp32 only, got precision={precision!r}")
        self.module, self.max_physical_batch = model, max_physical_batch
        self.model = GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )
        self.optimizer = DPOptimizerFastGradientClipping(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )
        self.criterion = DPLossFastGradientClipping(
            self.model, self.optimizer, nn.CrossEntropyLoss(), loss_reduction="mean"
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if x.shape[1] != 1:
            raise ValueError(
                f"dp-opacus-ghost clips per image: one view per example, got {x.shape[1]}"
            )
        if x.shape[0] == 0:  # a noise-only step
            self.optimizer.zero_grad(set_to_none=True)
            for p in self.params:
                p.grad = torch.zeros_like(p)
            self.optimizer.step()
            return math.nan
        chunks = list(
            zip(x.split(self.max_physical_batch), y.split(self.max_physical_batch), strict=True)
        )
        total = 0.0
        for i, (xc, yc) in enumerate(chunks):
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.criterion(self.model(xc[:, 0]), yc)
            loss.backward()
            self.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
            self.optimizer.step()
            total += float(loss.detach()) * xc.shape[0] / x.shape[0]
        return total


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

    ``kind``: one of `KINDS`; noise multiplier 1, clip 1, expected batch ``batch``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    device = device or resolve_device()
    physical = max_physical_batch or batch
    torch.manual_seed(0)
    model = create_backbone(backbone, norm=norm, width=width).to(device)
    prepare_for_timing(model, norm, size, device)
    model.train()
    opt = make_optimizer(model.parameters(), lr=0.1)
    dp = {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "expected_batch_size": batch,
        "max_physical_batch": physical,
        "precision": precision,
    }
    if kind == "nonprivate":
        step: Any = SGDStep(model, opt, max_physical_batch=physical, precision=precision)
    elif kind == "dp-opacus-ghost":
        step = OpacusGhostStep(model, opt, **dp)
    else:
        step = DPSGDStep(model, opt, mode="bk" if kind == "dp" else "hooks", **dp)
    x = torch.randn(batch, views, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return step, x, y


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
    for _ in range(warmup):
        step(x, y)
    times = []
    cpu0 = time.process_time()
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        step(x, y)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    # CPU seconds this process got per wall second and thread over the timed steps: about 1 on
    # an idle CPU, lower when other processes share its cores (a GPU step idles the CPU).
    cpu_share = (time.process_time() - cpu0) / max(sum(times), 1e-9) / torch.get_num_threads()
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
