"""GroupNorm: per-sample statistics over channel groups; DP-safe without any privacy cost."""

from __future__ import annotations

from torch import nn

from norms.errors import NormSpecError
from norms.registry import register_norm


def num_groups_for(
    num_channels: int, num_groups: int, group_size: int | None, *, norm: str = "group_norm"
) -> int:
    """The number of groups for ``num_channels``, from a group count or a group size.

    De et al. use 16 groups; Klause et al.'s code caps the count at the channel count
    (``min(G, C)``); the KernelNorm authors' baselines use groups of 32 channels.
    """
    if group_size is not None:
        if group_size < 1 or num_channels % group_size:
            raise NormSpecError(
                f"{norm}: group_size={group_size} does not divide {num_channels} channels"
            )
        return num_channels // group_size
    if num_groups < 1:
        raise NormSpecError(f"{norm}: num_groups must be >= 1, got {num_groups}")
    groups = min(num_groups, num_channels)
    if num_channels % groups:
        raise NormSpecError(f"{norm}: {num_channels} channels do not split into {groups} groups")
    return groups


@register_norm("group_norm", grad_sampler="opacus", test_variants=("group_size=8",))
def group_norm(
    num_channels: int,
    *,
    num_groups: int = 16,
    group_size: int | None = None,
    eps: float = 1e-5,
    device=None,
    dtype=None,
) -> nn.GroupNorm:
    """GroupNorm with affine; 16 groups by default, or ``group_size`` channels per group.

    A plain ``nn.GroupNorm`` (not a subclass) so Opacus finds its exact-type grad sampler.
    """
    groups = num_groups_for(num_channels, num_groups, group_size)
    return nn.GroupNorm(groups, num_channels, eps=eps, device=device, dtype=dtype)
