"""Top-1 accuracy of a model on the split a run is scored on."""

from __future__ import annotations

import torch
from torch import nn

from bench.data import DeviceData
from bkclip import autocast


def evaluate(model: nn.Module, data: DeviceData, batch: int, precision: str) -> float:
    """Top-1 accuracy on the whole test set (the validation split in a tuning run)."""
    return correct_count(model, data, batch, precision) / data.test_x.shape[0]


@torch.no_grad()
def correct_count(model: nn.Module, data: DeviceData, batch: int, precision: str) -> int:
    """How many examples of the evaluation split the model classifies right (top-1)."""
    model.eval()
    correct = 0
    for x, y in zip(data.test_x.split(batch), data.test_y.split(batch), strict=True):
        with autocast(data.device, precision):
            correct += int((model(data.prepare_eval(x)).argmax(1) == y).sum())
    model.train()
    return correct
