"""A dataset another package could ship: one file, registered through the entry-point group.

The tests name this module in a ``dp_norm_bench.datasets`` entry point of a distribution they
install into a temporary folder; nothing imports it directly.
"""

from __future__ import annotations

import torch

from bench.config import DataConfig
from bench.data import Decoded, register_dataset


@register_dataset(
    "grey_stripes",
    label="grey stripes",
    channels=1,
    image_size=16,
    num_classes=lambda cfg, params: params["classes"],
    num_train=64,
    flip=False,  # the stripes' direction is the class
    mean=(0.5,),
    std=(0.25,),
    files="generated; no files",
    needs_root=False,
)
def grey_stripes(cfg: DataConfig, *, classes: int = 2) -> Decoded:
    """Grey 16x16 images of vertical stripes whose period is the class, plus noise."""
    gen = torch.Generator().manual_seed(cfg.split_seed)
    labels = torch.arange(96) % classes
    cols = torch.arange(16).view(1, 1, 1, 16)
    period = (labels + 2).view(-1, 1, 1, 1)
    stripes = ((cols // period) % 2).float().expand(96, 1, 16, 16)
    x = (200 * stripes + 40 * torch.rand(96, 1, 16, 16, generator=gen)).to(torch.uint8)
    names = tuple(f"period_{k + 2}" for k in range(classes))
    return Decoded(x[:64], labels[:64], x[64:], labels[64:], names)
