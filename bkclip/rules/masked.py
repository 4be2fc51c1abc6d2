"""The rule for a layer with masked coordinates: masked per-example gradients, a slice at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from bkclip.errors import LayerCallError
from bkclip.maths import per_example
from bkclip.rule import ClipRule
from bkclip.rules.conv import ConvRule, conv_grads
from bkclip.rules.fallback import FALLBACK

#: Per-example gradients of a masked layer are built a slice of examples at a time, each slice
#: taking about this much memory (larger than `bkclip.maths.SLICE_BYTES`: these are whole
#: weight gradients, and one example per slice would be slow).
MASKED_SLICE_BYTES = 64 * 2**20


class MaskedRule(ClipRule):
    """A layer with masked coordinates that masking its output gradient cannot express
    (pre-pruned weights, or gradient dropping on a rule without a `ClipRule.channel_dim`).

    Its norms come from its per-example gradients (nn.Conv2d and nn.Linear directly, any other
    class through `FallbackRule`) times the masks, built a slice of examples at a time and
    dropped at once, so the layer holds only its input and output gradient, as a bk layer
    does. The clipped sum is linear, ``sum_i c_i (M * G_i) = M * sum_i c_i G_i``: one
    weight-gradient GEMM times the mask for nn.Conv2d and nn.Linear; other classes rebuild
    their per-example gradients a slice at a time. Exact for any layer; its norms cost what
    Opacus' hooks path costs for the layer.

    Args:
        masks: 0/1 coordinate masks by parameter id.
    """

    def __init__(self, masks: dict[int, torch.Tensor]):
        self.masks = masks

    @staticmethod
    def _direct(layer: nn.Module) -> str | None:
        if type(layer) is nn.Conv2d and ConvRule().check(layer) is None:
            return "conv"
        if type(layer) is nn.Linear:
            return "linear"
        return None

    @classmethod
    def check_inputs(cls, layer: nn.Module, name: str, args: tuple) -> None:
        """Refuse a call whose per-example gradients would come from Opacus' functorch path
        with several tensor inputs (it differentiates the first tensor input only).

        Raises:
            LayerCallError: Naming the layer.
        """
        tensors = sum(torch.is_tensor(t) for t in args)
        known = cls._direct(layer) is not None or type(layer) in GradSampleModule.GRAD_SAMPLERS
        if tensors > 1 and not known:
            raise LayerCallError(
                f"layer {name} ({type(layer).__qualname__}) takes {tensors} "
                "tensor inputs and has pruned or dropped coordinates its rule cannot mask; its "
                "per-example gradients would come from Opacus' functorch path, which "
                "differentiates the first input only: register an Opacus grad sampler for the "
                "class, or a channel_dim on its rule"
            )

    @classmethod
    def per_example_grads(
        cls, layer: nn.Module, inputs: list[torch.Tensor], g: torch.Tensor, n: int
    ) -> dict[nn.Parameter, torch.Tensor]:
        """Each example's gradient (the sum over its views) of every trainable parameter."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        direct = cls._direct(layer)
        if direct == "conv":
            x = inputs[0].to(g.dtype)
            if layer.weight.requires_grad:
                out[layer.weight] = conv_grads(layer, x, g, n).view(n, *layer.weight.shape)
            if layer.bias is not None and layer.bias.requires_grad:
                out[layer.bias] = per_example(g.sum(dim=(2, 3)), n).sum(1)
            return out
        if direct == "linear" and inputs[0].dim() == 2:
            a, gs = per_example(inputs[0].to(g.dtype), n), per_example(g, n)  # (N, K, .)
            if layer.weight.requires_grad:
                out[layer.weight] = gs.transpose(1, 2) @ a
            if layer.bias is not None and layer.bias.requires_grad:
                out[layer.bias] = gs.sum(1)
            return out
        views = FALLBACK.per_view(layer, inputs, g)
        return {p: per_example(v, n).sum(1) for p, v in views.items()}

    def _slices(
        self, layer: nn.Module, inputs: list[torch.Tensor], g: torch.Tensor, n: int
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, int, int]]:
        """``(inputs, g, first example, examples)`` over slices of whole examples."""
        k = g.shape[0] // n
        one = sum(p.numel() for p in layer.parameters(recurse=False) if p.requires_grad)
        step = max(1, MASKED_SLICE_BYTES // max(1, one * g.element_size()))
        for i in range(0, n, step):
            m = min(step, n - i)
            rows = slice(i * k, (i + m) * k)
            yield [t[rows] for t in inputs], g[rows], i, m

    def _masked(self, grads: dict[nn.Parameter, torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
        for p, v in grads.items():
            mask = self.masks.get(id(p))
            if mask is not None:
                v.mul_(mask.to(v.dtype))
        return grads

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        parts = []
        for xs, gs, _, m in self._slices(layer, inputs, g, state.n):
            grads = self._masked(self.per_example_grads(layer, xs, gs, m))
            parts.append(sum(v.flatten(1).square().sum(1) for v in grads.values()))
            del grads
        return torch.cat(parts)

    def _direct_sum(self, layer, direct, inputs, g, coef):
        """The clipped sum of nn.Conv2d or nn.Linear: one weight-gradient GEMM, then masked."""
        gc = g * coef.view(-1, *([1] * (g.dim() - 1)))
        x = inputs[0].to(g.dtype)
        out = {}
        if direct == "conv":
            weight = torch.nn.grad.conv2d_weight(
                x, layer.weight.shape, gc, stride=layer.stride, padding=layer.padding
            )
            bias_dims: tuple[int, ...] = (0, 2, 3)
        else:
            weight, bias_dims = gc.t() @ x, (0,)
        if layer.weight.requires_grad:
            out[layer.weight] = weight
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = gc.sum(dim=bias_dims)
        return self._masked(out)

    def clipped_sum(self, layer, inputs, g, coef, state):
        direct = self._direct(layer)
        if direct is not None and (direct == "conv" or inputs[0].dim() == 2):
            return self._direct_sum(layer, direct, inputs, g, coef)
        c = coef.view(state.n, -1)[:, 0]
        total: dict[nn.Parameter, torch.Tensor] = {}
        for xs, gs, i, m in self._slices(layer, inputs, g, state.n):
            grads = self.per_example_grads(layer, xs, gs, m)
            for p, v in grads.items():
                part = torch.einsum("n,n...->...", c[i : i + m].to(v.dtype), v)
                total[p] = part if p not in total else total[p] + part
            del grads
        return self._masked(total)
