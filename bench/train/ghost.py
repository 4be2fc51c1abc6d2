"""Opacus' fast gradient clipping as one DP step: the perf checks' point of comparison."""

from __future__ import annotations

import functools
import math

import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from bkclip.steps import OpacusDPStep


class OpacusGhostStep(OpacusDPStep):
    """A DP-SGD step through Opacus' fast gradient clipping (``grad_sample_mode="ghost"``).

    The three objects ``PrivacyEngine.make_private(..., grad_sample_mode="ghost")`` builds,
    without its data loader: `GradSampleModuleFastGradientClipping` computes each example's
    gradient norm per layer (ghost norms where Opacus has a norm sampler, ``nn.Linear`` here;
    every other layer's per-example gradients materialised by its grad sampler and reduced to
    norms at once), `DPLossFastGradientClipping` runs the two backward passes (the first for
    the norms, the second for the sum of clipped gradients, each example's loss weighted by
    min(1, C / norm)), and `DPOptimizerFastGradientClipping` adds the noise, scales by the
    expected batch and updates. A logical batch is split into physical batches as the
    engine's steps split it (Opacus' skip-step accumulation). The parameters are
    `bkclip.steps.OpacusDPStep`'s.

    Opacus clips per image, so augmentation multiplicity (K views sharing one clipped
    gradient) has no equivalent here: only one view per example is accepted. Only fp32: in bf16
    Opacus would take norms in bf16, which the engine's steps refuse to do (the clipped
    gradient can overshoot C).
    """

    dp_optimizer = DPOptimizerFastGradientClipping

    def _wrap(self, model: nn.Module, max_grad_norm: float) -> nn.Module:
        if self.precision != "fp32":
            raise ValueError(f"dp-opacus-ghost runs in fp32 only, got precision={self.precision!r}")
        return GradSampleModuleFastGradientClipping(
            model,
            batch_first=True,
            loss_reduction="mean",
            max_grad_norm=max_grad_norm,
            use_ghost_clipping=True,
        )

    @functools.cached_property
    def criterion(self) -> DPLossFastGradientClipping:
        """The loss whose backward runs Opacus' two passes over the wrapped model."""
        return DPLossFastGradientClipping(
            self.model, self.optimizer, nn.CrossEntropyLoss(), loss_reduction="mean"
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.chunk_losses = []
        if x.shape[1] != 1:
            raise ValueError(
                f"dp-opacus-ghost clips per image: one view per example, got {x.shape[1]}"
            )
        if x.shape[0] == 0:  # a noise-only step
            self.optimizer.zero_grad(set_to_none=True)
            for p in self.params:
                p.grad = torch.zeros_like(p)
            self.optimizer.step()
            return math.nan
        return self._accumulate(x, y, self._two_pass_backward, self.optimizer.step)

    def _two_pass_backward(self, xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        """One physical batch's loss; its backward takes the norms, then the clipped sum."""
        loss = self.criterion(self.model(xc[:, 0]), yc)
        loss.backward()
        return loss
