"""The interface through which the clipper and the DP step read which coordinates are trained."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch
from torch import nn


class CoordinateMasks(abc.ABC):
    """Coordinates a DP step leaves out: weights pruned for the whole run, and output channels
    dropped at one step. A masked coordinate is neither clipped, nor noised, nor updated.

    A run's masks subclass this (the benchmark's pre-pruning and gradient dropping do); the
    clipper and `bkclip.steps.DPSGDStep` read nothing else of them.
    """

    @property
    @abc.abstractmethod
    def active(self) -> bool:
        """Whether anything is masked (when not, the step ignores the masks altogether)."""

    @abc.abstractmethod
    def begin_step(
        self, step: int, hooks_off: Callable[[], AbstractContextManager] | None = None
    ) -> None:
        """Choose step ``step``'s masks (``hooks_off``: a context in which a forward and
        backward pass of the model records nothing for the step)."""

    @abc.abstractmethod
    def channel_keep(self, layer: nn.Module) -> torch.Tensor | None:
        """This step's kept output channels of ``layer`` (0/1 floats), or None when none is
        dropped."""

    @abc.abstractmethod
    def is_pruned(self, layer: nn.Module) -> bool:
        """Whether any weight ``layer`` owns has pruned coordinates."""

    @abc.abstractmethod
    def masks(self, params: list[nn.Parameter]) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """``(p, mask)`` for each of ``params`` with masked coordinates at this step."""

    @abc.abstractmethod
    def dropped(self, params: list[nn.Parameter]) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """``(p, mask)`` for each of ``params`` with channels dropped at this step."""
