"""Top-1 accuracy of a model on the split a run is scored on."""

from __future__ import annotations

import torch
from torch import nn

from bench.data import DeviceData
from bkclip import autocast


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch: int, precision: str) -> float:
    """Top-1 accuracy on the whole test set (the validation split in a tuning run)."""
    model.eval()
    correct = 0
    for x, y in zip(data.test_x.split(batch), data.test_y.split(batch), strict=True):
        with autocast(data.device, precision):
            correct += int((model(data.prepare_eval(x)).argmax(1) == y).sum())
    model.train()
    return correct / data.test_x.shape[0]
