"""The non-private reference of a run: the same model and step without privacy, timed alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.config import TrainingConfig
from bench.data import DeviceData
from bench.measure import StepMemory, StepTimer
from bench.train.ema import ema_model
from bench.train.schedule import after_update, lr_scheduler
from bench.train.setup import build_sgd_step
from bench.train.views import Views


@dataclass(frozen=True)
class NonPrivateMeasure:
    """The non-private reference of a run.

    Attributes:
        throughput: Images/s over the timed steps (None when none was timed).
        relative_se: Relative standard error of ``throughput`` (`StepTimer.relative_se`).
        timed_steps: Steps timed.
        peak_bytes: The steps' own peak device memory above what was held before them.
        peak_abs_bytes: The allocator's whole peak during them.
    """

    throughput: float | None
    relative_se: float | None
    timed_steps: int
    peak_bytes: int | None
    peak_abs_bytes: int | None


def nonprivate_throughput(
    model: nn.Module,
    data: DeviceData,
    training: TrainingConfig,
    seed: int,
    *,
    steps: int,
    match_relative_se: float | None = None,
    max_timed_steps: int | None = None,
    on_step: Callable[[nn.Module, int], None] | None = None,
) -> NonPrivateMeasure:
    """Images/s and memory of non-private SGD on the same model, over the same kind of step.

    Same expected batch (a fixed B), the same physical batches, augmentation and optimiser
    (`bench.train.setup.build_sgd_step`), no per-sample gradients; each timed step holds what a
    DP step holds apart from privacy: sampling the batch, augmentation, forward, backward, the
    update, the learning-rate schedule (of a run of ``steps`` steps), when ``training.ema`` is
    set, the EMA update, and ``on_step(model, step)``, the norm's per-step hook
    (`norms.ResolvedNorm.on_step`, e.g. statistics recomputed from public data), so the
    DP/non-DP ratio compares like with like; the same warm-up is excluded. At least
    ``training.throughput_steps`` steps are timed, then more until the relative standard error
    of the throughput is no larger than ``match_relative_se`` (the DP side's), up to
    ``max_timed_steps`` (the DP side's count). Trains ``model`` in place: pass a copy, and free
    the DP model first so that the memory figures are this step's alone.
    """
    model.train()
    step = build_sgd_step(model, training)
    scheduler = lr_scheduler(step.optimizer, training, steps)
    ema = ema_model(model, training.ema)
    gen = data.generator(seed, "nonprivate")
    views = Views(data, training, gen)
    timer = StepTimer(data.device, training.throughput_warmup_steps)
    n = min(training.batch_size, data.num_private)
    most = max(training.throughput_steps, max_timed_steps or 0)
    memory = StepMemory(data.device).start()

    def more() -> bool:
        if timer.steps < training.throughput_steps:
            return True
        if timer.steps >= most or match_relative_se is None:
            return False
        se = timer.relative_se
        return se is None or se > match_relative_se

    count = 0
    while timer.steps < training.throughput_steps or more():
        images: list[int] = []
        with timer.step(images):
            if on_step is not None:
                on_step(model, count)
            x, y = views(torch.randperm(data.num_private, generator=gen, device=data.device)[:n])
            step(x, y)
            after_update(scheduler, ema, model)
            images.append(x.shape[0] * x.shape[1])
        count += 1
    return NonPrivateMeasure(
        timer.throughput, timer.relative_se, timer.steps, memory.above, memory.absolute
    )
