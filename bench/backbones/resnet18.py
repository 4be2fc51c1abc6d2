"""ResNet-18 for CIFAR: timm's BasicBlock layout (2,2,2,2) with a 3x3 stride-1 stem, no max-pool."""

from __future__ import annotations

import torch
from torch import nn

from bench.backbones.layers import NormPlan, Residual, act, scaled
from bench.backbones.registry import register_backbone
from norms import ResolvedNorm


class _BasicBlock(nn.Module):
    """timm's BasicBlock (conv-norm-act-conv-norm + shortcut, then act) made Opacus-safe: the add
    is out of place, activations are not in place, and ScaleNorm's norm sits between the add and
    the activation (add -> ScaleNorm -> ReLU)."""

    def __init__(self, plan: NormPlan, cin: int, cout: int, stride: int, act_layer: str):
        super().__init__()
        branch = nn.Sequential(
            plan.conv_norm(cin, cout, 3, stride), act(act_layer), plan.conv_norm(cout, cout, 3)
        )
        shortcut = plan.conv_norm(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.residual = Residual(branch, shortcut, post=plan.post_residual(cout))
        self.act = act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x))


class CifarResNet(nn.Module):
    """Stem conv3x3(64)-norm-act, four stages of BasicBlocks (64-512), global mean pool, Linear."""

    def __init__(
        self,
        plan: NormPlan,
        *,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        act_layer: str = "relu",
    ):
        super().__init__()
        widths = [scaled(64 * 2**i, width) for i in range(len(layers))]
        self.stem = nn.Sequential(plan.conv_norm(in_chans, widths[0], 3), act(act_layer))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (n, cout) in enumerate(zip(layers, widths, strict=True)):
            for b in range(n):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(_BasicBlock(plan, cin, cout, stride, act_layer))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@register_backbone("resnet18", timm_name="resnet18_cifar")
def resnet18(
    norm: ResolvedNorm,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    width: float = 1.0,
    act_layer: str = "relu",
) -> CifarResNet:
    """ResNet-18 with a CIFAR stem (timm name ``resnet18_cifar``: timm's own is for ImageNet)."""
    return CifarResNet(
        NormPlan(norm), num_classes=num_classes, in_chans=in_chans, width=width, act_layer=act_layer
    )
