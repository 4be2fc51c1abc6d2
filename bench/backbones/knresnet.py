"""KNResNet-13, the KernelNorm authors' CIFAR model: pre-activation blocks of normalising convs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.backbones.layers import ModelArgs, NormPlan, Residual
from bench.backbones.registry import register_backbone
from norms import ResolvedNorm


class KNResNet13(nn.Module):
    """12 normalising convolutions and a linear head.

    ``stem(64) -> block(64) -> [trans(c) + maxpool -> block(c)] for c in (128, 256, 256)``,
    where a block is ``x + NC(Act(NC(Act(x))))`` and NC is the norm's fused normalising
    convolution (for other norms: Norm -> Conv, keeping the normalise-then-convolve order;
    the stem is Conv -> Norm).
    Head: standalone norm (per-pixel KernelNorm, statistics dropout 0.5) -> Act ->
    AdaptiveAvgPool(2) -> Linear(4*256, classes).
    The paper gives widths 64-64-128-256-256 with max-pooling between stages; the exact
    placement of the transition convolutions is this implementation's reading of it.
    Inputs are not mean/std-normalised by the authors for KN models (a data option here).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        plan = args.plan
        c64, c128, c256 = args.channels(64, 128, 256)

        def block(c: int) -> Residual:
            branch = nn.Sequential(
                args.act(), plan.norm_conv(c, c, 3), args.act(), plan.norm_conv(c, c, 3)
            )
            return Residual(branch, post=plan.post_residual(c))

        # The stem convolves the image first for non-fused norms: normalising 3 raw colour
        # channels with a channel-grouped norm is ill-defined (groups of 16 or group sizes).
        layers: list[nn.Module] = [plan.conv_norm(args.in_chans, c64, 3), block(c64)]
        cin = c64
        for cout in (c128, c256, c256):
            layers += [args.act(), plan.norm_conv(cin, cout, 3), nn.MaxPool2d(2), block(cout)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head_norm = plan.layer(cin)
        self.head_act = args.act()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.num_features = 4 * cin
        self.fc = nn.Linear(self.num_features, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head_act(self.head_norm(self.features(x))))
        return self.fc(torch.flatten(x, 1))


@register_backbone("knresnet13")
def knresnet13(norm: ResolvedNorm, **common: Any) -> KNResNet13:
    """KNResNet-13 (Nasirigerdeh et al.), built for KernelNorm; other norms take Norm -> Conv."""
    return KNResNet13(ModelArgs(NormPlan(norm), **common))
