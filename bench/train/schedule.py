"""The learning-rate schedule, and what follows the update in every timed step, DP or not."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from bench.config import TrainingConfig
from bench.train.ema import EMA


def lr_lambda(training: TrainingConfig, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if step < training.warmup_steps:
            return (step + 1) / training.warmup_steps
        if training.lr_schedule == "cosine":
            t = (step - training.warmup_steps) / max(1, steps - training.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if training.lr_schedule == "step":
            passed = sum(step >= m * steps for m in training.lr_milestones)
            return training.lr_gamma**passed
        return 1.0

    return factor


def lr_scheduler(
    optimizer: torch.optim.Optimizer, training: TrainingConfig, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of a run of ``steps`` steps on ``optimizer`` (`lr_lambda`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(training, steps))


def after_update(
    scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None, model: nn.Module
) -> None:
    """What follows the update in every timed step, DP or not: the schedule and the EMA."""
    scheduler.step()
    if ema is not None:
        ema.update(model)
