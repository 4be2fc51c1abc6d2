"""The materialising fallback for opted-in classes: Opacus' grad samplers, one layer at a time."""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from torch import nn

from bkclip.maths import per_view_norm_sq, per_view_sum
from bkclip.rule import ClipRule


class FallbackRule(ClipRule):
    """A class opted into the fallback: Opacus' grad sampler for its exact type, or Opacus'
    functorch path, one layer at a time."""

    def per_view(
        self, layer: nn.Module, inputs: list[torch.Tensor], g: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        """Every view's gradient of each trainable parameter of ``layer``."""
        inputs = [t.to(g.dtype) if t.is_floating_point() else t for t in inputs]
        sampler = GradSampleModule.GRAD_SAMPLERS.get(type(layer))
        if sampler is not None:
            return sampler(layer, inputs, g)
        return ft_compute_per_sample_gradient(layer, inputs, g)

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        return per_view_norm_sq(self.per_view(layer, inputs, g), state.n)

    def clipped_sum(self, layer, inputs, g, coef, state):
        # Recomputed rather than kept: a fallback layer may be large.
        return per_view_sum(coef, self.per_view(layer, inputs, g))


#: The one fallback rule every opted-in class shares.
FALLBACK = FallbackRule()
