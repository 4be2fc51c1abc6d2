"""The batch-independence check: one example's output may not change with the rest of its batch."""

from __future__ import annotations

import torch
from torch import nn

#: Largest relative change of one example's output that still counts as none: float32
#: kernels may reorder sums with the batch's content, never by more than rounding.
TOLERANCE = 1e-4


def batch_dependence(model: nn.Module, image_shape: tuple[int, int, int], batch: int = 3) -> float:
    """How much example 0's output moves when the other examples of its batch are replaced.

    DP-SGD bounds each example's influence by clipping its own gradient; a layer that mixes
    examples (a batch mean, a batch variance) lets one example move every other example's
    output and gradient, and the bound no longer holds. The model runs in train mode (where
    batch statistics are used) twice, on two batches that share example 0 and differ in every
    other, with the same random draws (dropout) both times, without gradients.

    Args:
        model: The model, in any mode (restored after).
        image_shape: ``(channels, height, width)`` of one input.
        batch: Examples per batch (at least 2).

    Returns:
        ``max |out_a[0] - out_b[0]| / max(max |out_a[0]|, 1e-12)``: 0 for a model whose
        examples are independent, up to `TOLERANCE` with rounding.
    """
    param = next(iter(model.parameters()), None)
    kind = {} if param is None else {"device": param.device, "dtype": param.dtype}
    g = torch.Generator().manual_seed(0)
    first = torch.randn(batch, *image_shape, generator=g).to(**kind)
    second = first.clone()
    second[1:] = 3 * torch.randn(batch - 1, *image_shape, generator=g).to(**kind) + 1
    was_training = model.training
    model.train()
    outputs = []
    try:
        for x in (first, second):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(0)
                outputs.append(model(x)[0].float())
    finally:
        model.train(was_training)
    a, b = outputs
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
