"""The exponential moving average of a model's weights, evaluated at the end of a run."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA of the weights with De et al.'s warm-up: decay_t = min(decay, (1 + t) / (10 + t)).

    The first update copies the model; update t >= 1 moves every floating-point parameter and
    buffer towards the model's by 1 - decay_t (other buffers are copied). The decay is computed
    on the host from a Python count and all tensors move in one ``torch._foreach_lerp_``, so an
    update only queues device work: torch's ``AveragedModel`` read its step count off the
    device once per parameter, a synchronisation per parameter inside the timed step.

    Attributes:
        module: The averaged copy of the model (evaluate it).
        updates: Updates made so far.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (the same architecture as `module`)."""
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        floats = [(a, c.detach()) for a, c in pairs if a.is_floating_point()]
        others = [(a, c.detach()) for a, c in pairs if not a.is_floating_point()]
        if self.updates == 0:
            torch._foreach_copy_([a for a, _ in pairs], [c.detach() for _, c in pairs])
        else:
            t = self.updates
            mu = min(self.decay, (1 + t) / (10 + t))
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - mu)
            if others:
                torch._foreach_copy_([a for a, _ in others], [c for _, c in others])
        self.updates += 1


def ema_model(model: nn.Module, decay: float | None) -> EMA | None:
    """The EMA of ``model``'s weights (see `EMA`), or None when ``decay`` is None (or 0)."""
    return EMA(model, decay) if decay else None
