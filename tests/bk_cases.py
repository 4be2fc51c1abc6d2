"""The book-keeping clipper's oracle and the all-pairs design of the cases it is checked on."""

from __future__ import annotations

from itertools import combinations, product

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import list_backbones
from bkclip import BookKeepingClipper
from tests.dp_cases import NORM_VARIANTS, SIZE


def oracle(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each example alone (its K views, loss averaged over them), clipped, then summed."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for xi, yi in zip(x, y, strict=True):
        loss = F.cross_entropy(model(xi), yi.repeat(xi.shape[0]))
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        norms.append(norm)
        factor = (clip / (norm + 1e-6)).clamp(max=1.0)
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total, torch.stack(norms)


def bk(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clip: float,
    strategy: str,
    keep: str = "auto",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The book-keeping clipper's clipped sums (one per trainable parameter) and norms."""
    for p in model.parameters():
        p.summed_grad = None
    clipper = BookKeepingClipper(model, strategy=strategy, keep=keep)
    clipper.accumulate(x, y, max_grad_norm=clip)
    return [p.summed_grad for p in model.parameters() if p.requires_grad], clipper.last_norms


def assert_clipped_sums_match_the_oracle(
    model: nn.Module, views: int, strategy: str, keep: str = "auto"
) -> None:
    """Three examples, the clip bound at their median norm (some clipped, some not): the
    book-keeping norms and clipped sums equal the one-example oracle's."""
    x = torch.randn(3, views, 3, SIZE, SIZE, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    _, ref_norms = oracle(model, x, y, clip=1e9)
    clip = float(ref_norms.median())
    ref, ref_norms = oracle(model, x, y, clip)
    got, norms = bk(model, x, y, clip, strategy, keep)
    torch.testing.assert_close(norms.double(), ref_norms, atol=1e-8, rtol=1e-6)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-6)


def all_pairs(factors: dict[str, list]) -> list[dict]:
    """A covering design of strength two: rows in which every value of every factor meets
    every value of every other factor at least once.

    Greedy and deterministic (in the manner of AETG): each row starts from the first pair no
    row covers yet and fills the other factors one at a time with the value that covers the
    most pairs still uncovered. It needs at least the product of the two largest factors' sizes
    in rows, far fewer than the full cross product.
    """
    names = list(factors)

    def pair(a: str, x, b: str, y) -> tuple:
        return ((a, x), (b, y)) if names.index(a) < names.index(b) else ((b, y), (a, x))

    wanted = [
        ((a, x), (b, y))
        for a, b in combinations(names, 2)
        for x, y in product(factors[a], factors[b])
    ]
    uncovered, rows = set(wanted), []
    while uncovered:
        (a, x), (b, y) = next(p for p in wanted if p in uncovered)
        row = {a: x, b: y}
        for name in names:
            if name not in row:
                row[name] = max(
                    factors[name],
                    key=lambda v, name=name: sum(
                        pair(k, u, name, v) in uncovered for k, u in row.items()
                    ),
                )
        row = {name: row[name] for name in names}
        uncovered -= {pair(a, row[a], b, row[b]) for a, b in combinations(names, 2)}
        rows.append(row)
    return rows


# Every backbone meets every norm variant (so every rule is reached in every place it sits),
# and every view count, strategy and keep setting meets each of those and each other.
# Materialised layers keep either their per-example gradients or their (input, output
# gradient) for the clipped sum; ``keep`` forces each.
FACTORS = {
    "backbone": sorted(list_backbones()),
    "norm": NORM_VARIANTS,
    "views": [1, 2, 3],
    "strategy": ["auto", "ghost", "materialise"],
    "keep": ["auto", "per_example", "inputs"],
}
BK_CASES = [
    pytest.param(*row.values(), id="{backbone}-{norm}-K{views}-{strategy}-{keep}".format(**row))
    for row in all_pairs(FACTORS)
]
