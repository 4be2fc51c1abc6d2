"""Wide ResNet 16-4 as in De et al.'s DP code: pre-activation, GroupNorm(16), optional WS."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.backbones.layers import ModelArgs, NormPlan, Residual
from bench.backbones.registry import register_backbone
from norms import ResolvedNorm


class WideResNet(nn.Module):
    """Stem conv3x3(16) -> 3 stages of ``blocks`` pre-activation blocks -> head.

    Branch: ``Act -> Norm -> Conv3x3`` twice (the first with the stage's stride); the first
    block of a stage has the shortcut ``Act -> Norm -> Conv1x1(stride)``; out-of-place add,
    then ScaleNorm's separate norm on the sum when enabled (before the next block).
    Head: ``Act -> Norm -> global mean pool -> Linear``.
    """

    def __init__(self, args: ModelArgs, *, depth: int = 16, widen: int = 4):
        super().__init__()
        plan = args.plan
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        stem, *widths = args.channels(16, *(16 * widen * 2**i for i in range(3)))
        self.stem = plan.conv(args.in_chans, stem, 3, bias=True)
        stages: list[nn.Module] = []
        cin = stem
        for i, cout in enumerate(widths):
            for b in range(blocks):
                stride = (1 if i == 0 else 2) if b == 0 else 1
                branch = nn.Sequential(
                    args.act(),
                    plan.norm_conv(cin, cout, 3, stride),
                    args.act(),
                    plan.norm_conv(cout, cout, 3),
                )
                shortcut = None
                if b == 0:
                    shortcut = nn.Sequential(args.act(), plan.norm_conv(cin, cout, 1, stride))
                stages.append(Residual(branch, shortcut, post=plan.post_residual(cout)))
                cin = cout
        self.blocks = nn.Sequential(*stages)
        self.head_act = args.act()
        self.head_norm = plan.layer(cin)
        self.num_features = cin
        self.fc = nn.Linear(cin, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_norm(self.head_act(self.blocks(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


@register_backbone("wrn16_4")
def wrn16_4(norm: ResolvedNorm, *, ws: bool = True, **common: Any) -> WideResNet:
    """WRN-16-4 (De et al.), pre-activation, weight standardisation on by default (``ws``)."""
    return WideResNet(ModelArgs(NormPlan(norm, ws=ws), **common), depth=16, widen=4)
