"""ResNet-18 for CIFAR: timm's BasicBlock layout (2,2,2,2) with a 3x3 stride-1 stem, no max-pool."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.backbones.layers import ModelArgs, NormPlan, Residual
from bench.backbones.registry import register_backbone
from norms import ResolvedNorm


class _BasicBlock(nn.Module):
    """timm's BasicBlock (conv-norm-act-conv-norm + shortcut, then act) made Opacus-safe: the add
    is out of place, activations are not in place, and ScaleNorm's norm sits between the add and
    the activation (add -> ScaleNorm -> ReLU)."""

    def __init__(self, args: ModelArgs, cin: int, cout: int, stride: int):
        super().__init__()
        plan = args.plan
        branch = nn.Sequential(
            plan.conv_norm(cin, cout, 3, stride), args.act(), plan.conv_norm(cout, cout, 3)
        )
        shortcut = plan.conv_norm(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.residual = Residual(branch, shortcut, post=plan.post_residual(cout))
        self.act = args.act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.residual(x))


class CifarResNet(nn.Module):
    """Stem conv3x3(64)-norm-act, four stages of BasicBlocks (64-512), global mean pool, Linear."""

    def __init__(self, args: ModelArgs, *, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        widths = args.channels(*(64 * 2**i for i in range(len(layers))))
        self.stem = nn.Sequential(args.plan.conv_norm(args.in_chans, widths[0], 3), args.act())
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (n, cout) in enumerate(zip(layers, widths, strict=True)):
            for b in range(n):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(_BasicBlock(args, cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.fc = nn.Linear(cin, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@register_backbone("resnet18", timm_name="resnet18_cifar")
def resnet18(norm: ResolvedNorm, **common: Any) -> CifarResNet:
    """ResNet-18 with a CIFAR stem (timm name ``resnet18_cifar``: timm's own is for ImageNet)."""
    return CifarResNet(ModelArgs(NormPlan(norm), **common))
