"""ScaleNorm (Klause et al. 2022): GroupNorm in blocks plus a separate GroupNorm after each add."""

from __future__ import annotations

from torch import nn

from norms.group_norm import num_groups_for
from norms.registry import register_norm


@register_norm("scale_norm", grad_sampler="opacus", post_residual=True)
def scale_norm(
    num_channels: int,
    *,
    num_groups: int = 16,
    group_size: int | None = None,
    eps: float = 1e-5,
    device=None,
    dtype=None,
) -> nn.GroupNorm:
    """GroupNorm everywhere, and a separate GroupNorm (own affine) on every residual sum.

    ``post_residual=True`` tells the backbone to build an extra instance of this layer after
    each ``branch(x) + shortcut(x)``; reusing the block's own norm there (as one replication
    did) is not ScaleNorm.
    """
    groups = num_groups_for(num_channels, num_groups, group_size, norm="scale_norm")
    return nn.GroupNorm(groups, num_channels, eps=eps, device=device, dtype=dtype)
