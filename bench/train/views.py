"""A logical batch of example indices as K augmented views each, on the device."""

from __future__ import annotations

import torch

from bench.config import TrainingConfig
from bench.data import DeviceData


class Views:
    """The logical batch of examples ``idx`` as K augmented views each, on the device."""

    def __init__(self, data: DeviceData, training: TrainingConfig, generator: torch.Generator):
        self.data, self.training, self.generator = data, training, generator

    def __call__(
        self, idx: torch.Tensor, keep: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: views of shape ``(B, K, C, H, W)`` and labels ``(B,)`` of the examples
        ``idx[keep]`` (a process's share), the augmentation stream advancing as for all of
        ``idx``."""
        t = self.training
        x_u8 = self.data.train_x[idx]
        y = self.data.train_y[idx[keep]]
        if t.augment:
            x = self.data.augment(
                x_u8,
                views=t.augmult,
                padding=t.crop_padding,
                flip=self.data.flip,  # as the dataset declares: never for digits
                generator=self.generator,
                keep=keep,
            )
        else:
            x = self.data.prepare_eval(x_u8[keep]).unsqueeze(1)
        return x, y
