"""ScaleNorm (Klause et al. 2022): GroupNorm in blocks plus a separate GroupNorm after each add."""

from __future__ import annotations

from norms.group_norm import group_norm_factory
from norms.registry import register_norm

scale_norm = register_norm("scale_norm", grad_sampler="opacus", post_residual=True)(
    group_norm_factory(
        "scale_norm",
        __name__,
        """GroupNorm everywhere, and a separate GroupNorm (own affine) on every residual sum.

        ``post_residual=True`` tells the backbone to build an extra instance of this layer after
        each ``branch(x) + shortcut(x)``; reusing the block's own norm there (as one replication
        did) is not ScaleNorm.
        """,
    )
)
