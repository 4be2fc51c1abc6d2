"""GroupNorm: per-sample statistics over channel groups; DP-safe without any privacy cost."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from norms.errors import NormSpecError
from norms.registry import register_norm


def num_groups_for(num_channels: int, num_groups: int, group_size: int | None, *, norm: str) -> int:
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


def group_norm_factory(name: str, module: str, doc: str) -> Callable[..., nn.GroupNorm]:
    """The factory of a norm that is a plain ``nn.GroupNorm``: 16 groups by default, or
    ``group_size`` channels per group; the one signature every GroupNorm-based norm takes.

    A plain ``nn.GroupNorm`` (not a subclass) so Opacus finds its exact-type grad sampler.

    Args:
        name: The norm's registered name, which the factory's errors and ``__name__`` carry.
        module: The module that registers it (the factory's ``__module__``, so it pickles by
            name).
        doc: The factory's docstring (the registry describes the norm by its first line).
    """

    def factory(
        num_channels: int,
        *,
        num_groups: int = 16,
        group_size: int | None = None,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ) -> nn.GroupNorm:
        groups = num_groups_for(num_channels, num_groups, group_size, norm=name)
        return nn.GroupNorm(groups, num_channels, eps=eps, device=device, dtype=dtype)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__, factory.__doc__ = module, doc
    return factory


group_norm = register_norm("group_norm", grad_sampler="opacus", test_variants=("group_size=8",))(
    group_norm_factory(
        "group_norm",
        __name__,
        """GroupNorm with affine; 16 groups by default, or ``group_size`` channels per group.

        A plain ``nn.GroupNorm`` (not a subclass) so Opacus finds its exact-type grad sampler.
        """,
    )
)
