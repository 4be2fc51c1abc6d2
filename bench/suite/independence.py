"""Before a sweep: every norm of the grid passes the batch-independence check on its backbones."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from bench.backbones import create_backbone
from bench.config import Suite
from bench.suite.reading import Context
from norms import resolve_norm
from norms.independence import TOLERANCE, batch_dependence

#: Input of the check: small images keep it to a fraction of a second per pair (every
#: backbone pools adaptively, so any size from 16 pixels builds the same layers).
_IMAGE = (3, 16, 16)


def check_batch_independence(
    suite: Suite, key_form: str, norm_index: Mapping[str, int], ctx: Context
) -> None:
    """Refuse a norm of the grid that makes one example's output depend on the rest of its
    batch on one of the grid's backbones, unless the norm declares that it reads across
    examples and what it charges (`norms.NormSpec.reads_across_examples`).

    A norm's own DP claim is not trusted: a plugin norm that subtracted the batch mean was
    recorded as DP-valid with no privacy cost. Each (backbone, norm) pair is checked once per
    process.

    Raises:
        ConfigError: Naming the norm's key, the backbone and how far the output moved.
    """
    grid = dict(suite.grid)
    for norm in grid["norm"]:
        if resolve_norm(norm).reads_across_examples:
            continue
        for backbone in grid["backbone"]:
            moved = _dependence(backbone, norm)
            if moved > TOLERANCE:
                raise ctx.error(
                    key_form.format(norm_index[norm]),
                    f"mixes the examples of a batch on {backbone}: one example's output moved "
                    f"by {moved:.2g} (relative) when the other examples of its batch changed, "
                    "so DP-SGD's per-example bound does not hold",
                    given=norm,
                    allowed="a norm that treats each example on its own, or one registered "
                    "with reads_across_examples and the charge= it spends (README, Adding a "
                    "norm)",
                )


@functools.lru_cache(maxsize=256)
def _dependence(backbone: str, norm: str) -> float:
    return batch_dependence(create_backbone(backbone, norm=norm), _IMAGE)
