"""KNResNet-13, the KernelNorm authors' CIFAR model: pre-activation blocks of normalising convs."""

from __future__ import annotations

import torch
from torch import nn

from bench.backbones.layers import NormPlan, Residual, act, scaled
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

    def __init__(
        self,
        plan: NormPlan,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        act_layer: str = "relu",
    ):
        super().__init__()
        c64, c128, c256 = (scaled(c, width) for c in (64, 128, 256))

        def block(c: int) -> Residual:
            branch = nn.Sequential(
                act(act_layer), plan.norm_conv(c, c, 3), act(act_layer), plan.norm_conv(c, c, 3)
            )
            return Residual(branch, post=plan.post_residual(c))

        # The stem convolves the image first for non-fused norms: normalising 3 raw colour
        # channels with a channel-grouped norm is ill-defined (groups of 16 or group sizes).
        layers: list[nn.Module] = [plan.conv_norm(in_chans, c64, 3), block(c64)]
        cin = c64
        for cout in (c128, c256, c256):
            layers += [act(act_layer), plan.norm_conv(cin, cout, 3), nn.MaxPool2d(2), block(cout)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head_norm = plan.layer(cin)
        self.head_act = act(act_layer)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.num_features = 4 * cin
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head_act(self.head_norm(self.features(x))))
        return self.fc(torch.flatten(x, 1))


@register_backbone("knresnet13")
def knresnet13(
    norm: ResolvedNorm,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width: float = 1.0,
    act_layer: str = "relu",
) -> KNResNet13:
    """KNResNet-13 (Nasirigerdeh et al.), built for KernelNorm; other norms take Norm -> Conv."""
    return KNResNet13(
        NormPlan(norm), num_classes=num_classes, in_chans=in_chans, width=width, act_layer=act_layer
    )
