"""The `none` norm: identity, the no-normalisation reference point."""

from __future__ import annotations

from torch import nn

from norms.registry import register_norm


@register_norm("none", grad_sampler="none", conv_bias=True)
def no_norm(num_channels: int, *, device=None, dtype=None) -> nn.Identity:
    """No normalisation (identity); the reference point every norm is compared against."""
    return nn.Identity()
