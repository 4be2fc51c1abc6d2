"""The rule for nn.Linear."""

from __future__ import annotations

import torch
from torch import nn

from bkclip.maths import per_example, sequence_norm_sq
from bkclip.rule import ClipRule, register_clip_rule


@register_clip_rule(nn.Linear)
class LinearRule(ClipRule):
    """nn.Linear on (N*K, D) inputs."""

    def channel_dim(self, layer: nn.Module, g: torch.Tensor) -> int | None:
        return g.dim() - 1

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        n = state.n
        a = per_example(inputs[0].to(g.dtype), n).transpose(1, 2)  # (N, D, K)
        gs = per_example(g, n).transpose(1, 2)  # (N, O, K)
        total, _ = sequence_norm_sq(a, gs, strategy)
        if layer.bias is not None:
            total = total + gs.sum(-1).square().sum(-1)
        return total

    def clipped_sum(self, layer, inputs, g, coef, state):
        gc = g * coef.view(-1, 1)
        out = {layer.weight: gc.t() @ inputs[0].to(g.dtype)}
        if layer.bias is not None:
            out[layer.bias] = gc.sum(0)
        return out
