"""Shared building blocks: the arguments every backbone takes, and its norm turned into layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import ScaledStdConv2d, create_act_layer, make_divisible
from torch import nn

from norms import ResolvedNorm


def scaled(channels: int, width: float) -> int:
    """Channel count at width multiplier ``width``, a multiple of 16 (so GroupNorm(16) divides)."""
    if width == 1.0:
        return channels
    return make_divisible(channels * width, 16)


def act(name: str) -> nn.Module:
    """A timm activation, never in place: Opacus' full backward hooks break on in-place ops."""
    return create_act_layer(name, inplace=False)


class Residual(nn.Module):
    """``post(branch(x) + shortcut(x))``, added out of place.

    ``post`` is ScaleNorm's separate norm on the sum (an identity for other norms).
    """

    def __init__(
        self, branch: nn.Module, shortcut: nn.Module | None = None, post: nn.Module | None = None
    ):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.post = post if post is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.branch(x) + self.shortcut(x))


class NormPlan:
    """Builds the layers a backbone needs from one resolved norm, so no backbone special-cases one.

    Args:
        norm: The resolved norm.
        ws: Use weight-standardised convolutions (timm's ``ScaledStdConv2d``) for the plain
            convolutions. KernelNorm's fused convolutions normalise their input windows and are
            left unstandardised, as in the KernelNorm authors' models.
    """

    def __init__(self, norm: ResolvedNorm, *, ws: bool = False):
        self.norm = norm
        self.ws = ws

    @property
    def fused(self) -> bool:
        return self.norm.fused_conv

    def conv(
        self, cin: int, cout: int, k: int = 3, stride: int = 1, *, bias: bool = False
    ) -> nn.Module:
        """A plain convolution (weight-standardised when ``ws``)."""
        if self.ws:
            # timm's ScaledStdConv2d: gain * (w - mean) / sqrt(fan_in * var + eps); eps chosen
            # so that eps/fan_in plays the role of De et al.'s floor of 1e-4 on fan_in * var.
            return ScaledStdConv2d(
                cin,
                cout,
                k,
                stride=stride,
                padding=k // 2,
                bias=bias,
                gamma=1.0,
                eps=1e-4 / (cin * k * k),
            )
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)

    def layer(self, channels: int) -> nn.Module:
        """A standalone norm (per-pixel KernelNorm for KernelNorm)."""
        return self.norm.layer(channels)

    def post_residual(self, channels: int) -> nn.Module | None:
        """ScaleNorm's separate norm on a residual sum, or None."""
        return self.norm.layer(channels) if self.norm.post_residual else None

    def _bias(self) -> bool:
        # A norm's shift replaces the bias of the convolution before it; a norm without one
        # (the identity) says so and the convolution keeps its bias.
        return self.norm.conv_bias

    def conv_norm(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
        """Conv -> Norm (post-norm blocks); the norm's fused convolution for a fused-conv norm."""
        if self.fused:
            return self.norm.fused_conv_layer(cin, cout, k, stride=stride)
        return nn.Sequential(self.conv(cin, cout, k, stride, bias=self._bias()), self.layer(cout))

    def norm_conv(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
        """Norm -> Conv (pre-norm blocks); the fused convolution of a fused-conv norm
        (KernelNorm), which normalises its input windows before convolving them."""
        if self.fused:
            return self.norm.fused_conv_layer(cin, cout, k, stride=stride)
        return nn.Sequential(self.layer(cin), self.conv(cin, cout, k, stride, bias=True))


@dataclass(frozen=True)
class ModelArgs:
    """What every backbone's model is built from: the part all builders share, written once.

    ``width`` and ``act_layer`` are spec parameters of every backbone (the registry reads their
    defaults here); ``num_classes`` and ``in_chans`` come from the caller, not the spec.

    Attributes:
        plan: The layers the run's norm gives.
        num_classes: Outputs of the classifier.
        in_chans: Channels of the input image.
        width: Channel multiplier (see `scaled`).
        act_layer: A timm activation name.
    """

    plan: NormPlan
    num_classes: int = 10
    in_chans: int = 3
    width: float = 1.0
    act_layer: str = "relu"

    def act(self) -> nn.Module:
        """A new activation layer (see `act`)."""
        return act(self.act_layer)

    def channels(self, *base: int) -> list[int]:
        """The channel counts ``base`` at this width."""
        return [scaled(c, self.width) for c in base]
