"""Rules for per-channel affine layers: the shared AffineRule, nn.GroupNorm and nn.LayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bkclip.maths import nbytes, per_view_norm_sq, per_view_sum, slices
from bkclip.rule import ClipRule, LayerState, register_clip_rule


class AffineRule(ClipRule):
    """Per-channel affine layers whose per-view gradients are a few numbers per channel
    (GroupNorm, LayerNorm, a frozen-statistics norm's affine): cheap to materialise, so every
    view's gradients are kept. A subclass says what the affine multiplies."""

    def channel_dim(self, layer: nn.Module, g: torch.Tensor) -> int | None:
        return 1  # a per-channel affine of an NCHW tensor; LayerNorm's rule says otherwise

    def normalised(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The tensor the layer's weight multiplies, and the dimensions its parameters are
        shared over within one view."""
        raise NotImplementedError

    def per_view(
        self, layer: nn.Module, x: torch.Tensor, g: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        """Every view's gradient of the layer's trainable weight and bias."""
        xh, dims = self.normalised(layer, x.to(g.dtype))
        out = {}
        if layer.weight is not None and layer.weight.requires_grad:
            out[layer.weight] = (xh * g).sum(dim=dims) if dims else xh * g
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.sum(dim=dims) if dims else g
        return out

    def releases(self, state: LayerState, inputs: list[torch.Tensor], g: torch.Tensor) -> bool:
        return True

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        # The normalised input is recomputed a slice at a time.
        rows = -(-g.shape[0] // slices(2 * nbytes(g)))
        parts = [
            self.per_view(layer, x, gs)
            for x, gs in zip(inputs[0].split(rows), g.split(rows), strict=True)
        ]
        state.per_view = {p: torch.cat([v[p] for v in parts]) for p in parts[0]}
        return per_view_norm_sq(state.per_view, state.n)

    def clipped_sum(self, layer, inputs, g, coef, state):
        return per_view_sum(coef, state.per_view)


@register_clip_rule(nn.GroupNorm)
class GroupNormRule(AffineRule):
    """nn.GroupNorm: the affine multiplies the group-normalised input."""

    def normalised(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        return F.group_norm(x, layer.num_groups, eps=layer.eps), tuple(range(2, x.dim()))


@register_clip_rule(nn.LayerNorm)
class LayerNormRule(AffineRule):
    """nn.LayerNorm: the affine multiplies the layer-normalised input."""

    def channel_dim(self, layer: nn.Module, g: torch.Tensor) -> int | None:
        return g.dim() - len(layer.normalized_shape)  # the first normalised dimension

    def normalised(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        dims = tuple(range(1, x.dim() - len(layer.normalized_shape)))
        return F.layer_norm(x, layer.normalized_shape, eps=layer.eps), dims
