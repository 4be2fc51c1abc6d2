"""LayerNorm for conv nets: per-sample statistics over (C, H, W), or over C at each pixel."""

from __future__ import annotations

import torch
from torch import nn

from norms.registry import register_norm


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at each pixel (ConvNeXt style) for NCHW tensors.

    It wraps a plain ``nn.LayerNorm`` rather than subclassing it (as timm's ``LayerNorm2d``
    does) because Opacus looks grad samplers up by exact class: the wrapped layer takes Opacus'
    fast LayerNorm sampler, a subclass would silently take the slower functorch path.
    """

    def __init__(self, num_channels: int, *, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(num_channels, eps=eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous(): Opacus' conv grad sampler (unfold2d) reads its input through
        # as_strided with NCHW-contiguous strides and is silently wrong on channels-last tensors.
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


@register_norm(
    "layer_norm", choices={"over": ("chw", "c")}, grad_sampler="opacus", test_variants=("over=c",)
)
def layer_norm(
    num_channels: int, *, over: str = "chw", eps: float = 1e-5, device=None, dtype=None
) -> nn.Module:
    """LayerNorm: ``over=chw`` is GroupNorm(1, C) (canonical), ``over=c`` normalises channels.

    ``chw`` follows the KernelNorm authors' definition: statistics over (C, H, W) per sample,
    per-channel affine.
    """
    if over == "c":
        return ChannelLayerNorm(num_channels, eps=eps, device=device, dtype=dtype)
    return nn.GroupNorm(1, num_channels, eps=eps, device=device, dtype=dtype)
