"""ResNet-9 as in Klause et al.'s DP code (ScaleNorm's home architecture)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.backbones.layers import ModelArgs, NormPlan, Residual
from bench.backbones.registry import register_backbone
from norms import ResolvedNorm


class ResNet9(nn.Module):
    """conv(64) -> conv(128)+pool -> res(128) -> conv(256)+pool -> conv(256)+pool -> res(256)
    -> AdaptiveMaxPool(2) -> Linear(4*256, classes).

    A conv block is Conv3x3(no bias) -> Norm -> Act (+ MaxPool2d(2)); a residual block is two
    conv blocks added to their input, followed by ScaleNorm's separate norm when enabled (no
    activation after it, as in the authors' model).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        plan = args.plan
        c64, c128, c256 = args.channels(64, 128, 256)

        def block(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
            layers = [plan.conv_norm(cin, cout, 3), args.act()]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return nn.Sequential(*layers)

        def res(c: int) -> Residual:
            return Residual(nn.Sequential(block(c, c), block(c, c)), post=plan.post_residual(c))

        self.features = nn.Sequential(
            block(args.in_chans, c64),
            block(c64, c128, pool=True),
            res(c128),
            block(c128, c256, pool=True),
            block(c256, c256, pool=True),
            res(c256),
        )
        self.pool = nn.AdaptiveMaxPool2d(2)
        self.num_features = 4 * c256
        self.fc = nn.Linear(self.num_features, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_backbone("resnet9")
def resnet9(norm: ResolvedNorm, **common: Any) -> ResNet9:
    """ResNet-9 (Klause et al.), 2.5M parameters at width 1."""
    return ResNet9(ModelArgs(NormPlan(norm), **common))
