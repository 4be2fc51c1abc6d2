"""Top-1 accuracy of a model on the split a run is scored on, and its per-example predictions."""

from __future__ import annotations

import torch
from torch import nn

from bench.data import DeviceData
from bkclip import autocast


def evaluate(model: nn.Module, data: DeviceData, batch: int, precision: str) -> float:
    """Top-1 accuracy on the whole test set (the validation split in a tuning run)."""
    return correct_count(model, data, batch, precision) / data.test_x.shape[0]


def correct_count(model: nn.Module, data: DeviceData, batch: int, precision: str) -> int:
    """How many examples of the evaluation split the model classifies right (top-1)."""
    return int((predict(model, data, batch, precision) == data.test_y).sum())


@torch.no_grad()
def predict(model: nn.Module, data: DeviceData, batch: int, precision: str) -> torch.Tensor:
    """The class the model predicts (top-1) for each example of the evaluation split, in its
    order, on the split's device."""
    model.eval()
    parts = []
    for x in data.test_x.split(batch):
        with autocast(data.device, precision):
            parts.append(model(data.prepare_eval(x)).argmax(1))
    model.train()
    return torch.cat(parts) if parts else data.test_y.new_empty(0)
