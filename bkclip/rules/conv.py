"""Rules for convolutions: nn.Conv2d and timm's weight-standardised ScaledStdConv2d."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d
from torch import nn

from bkclip.maths import (
    bias_norm_sq,
    bias_sum,
    conv_per_example,
    ghost_windows_norm_sq,
    nbytes,
    positions,
    row_dot,
    row_norm_sq,
    unfold,
    use_ghost,
    weighted_sum,
)
from bkclip.rule import ClipRule, LayerState, register_clip_rule


class MaterialisableRule(ClipRule):
    """A rule that materialises some layers' per-example weight gradients: it keeps whichever
    is smaller until the clipped sum, those gradients (the sum is then a cheap weighted
    reduction) or the input and output gradient (the sum is then one weight-gradient GEMM, the
    non-private step's own cost for the layer)."""

    def releases(self, state: LayerState, inputs: list[torch.Tensor], g: torch.Tensor) -> bool:
        kept = state.per_example
        if kept is None:
            return False
        smaller = nbytes(kept) <= nbytes(g) + sum(nbytes(t) for t in inputs)
        if state.keep == "inputs" or (state.keep == "auto" and not smaller):
            state.per_example = None
            return False
        return True


def conv_grads(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, n: int) -> torch.Tensor:
    """Per-example weight gradients (N, O, D) of ``layer`` for input x and output gradient g."""
    return conv_per_example(x, g, n, layer.kernel_size, layer.stride, layer.padding)


def _ghost_conv_norm_sq(layer: nn.Conv2d, n: int, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Ghost squared norms of a conv's per-example weight gradients for input x and output
    gradient g, both (N*K, ...), a slice of examples at a time."""
    return ghost_windows_norm_sq(
        n,
        layer.kernel_size,
        x,
        g,
        lambda xs: unfold(xs, layer.kernel_size, layer.padding, layer.stride),
    )


@register_clip_rule(nn.Conv2d)
class ConvRule(MaterialisableRule):
    """nn.Conv2d (groups=1, dilation=1, numeric padding)."""

    def channel_dim(self, layer: nn.Module, g: torch.Tensor) -> int | None:
        return 1

    def check(self, layer: nn.Module) -> str | None:
        if layer.groups != 1 or tuple(layer.dilation) != (1, 1):
            return f"groups={layer.groups}, dilation={tuple(layer.dilation)}; needs 1 and (1, 1)"
        if not isinstance(layer.padding, tuple):
            return f"padding={layer.padding!r}; needs numeric padding"
        return None

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        n = state.n
        x = inputs[0].to(g.dtype)
        d, o = layer.weight[0].numel(), g.shape[1]
        if use_ghost(d, o, g[0, 0].numel() * (x.shape[0] // n), strategy):
            total = _ghost_conv_norm_sq(layer, n, x, g)
        else:
            state.per_example = conv_grads(layer, x, g, n)
            total = row_norm_sq(state.per_example.flatten(1))
        if layer.bias is not None:
            total = total + bias_norm_sq(state, g)
        return total

    @staticmethod
    def _weight_sum(layer, inputs, g, coef, state):
        """sum_i c_i u_i for the conv weight: from kept per-example gradients, or one GEMM."""
        if state.per_example is not None:
            return weighted_sum(coef, state).view(layer.weight.shape)
        x, gc = inputs[0].to(g.dtype), g * coef.view(-1, 1, 1, 1)
        return torch.nn.grad.conv2d_weight(
            x,
            layer.weight.shape,
            gc,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
        )

    def clipped_sum(self, layer, inputs, g, coef, state):
        out = {layer.weight: self._weight_sum(layer, inputs, g, coef, state)}
        if layer.bias is not None:
            out[layer.bias] = bias_sum(coef, state)
        return out


@register_clip_rule(ScaledStdConv2d)
class WSConvRule(ConvRule):
    """timm's ScaledStdConv2d: a conv with w_hat = alpha * z, z = (w - mean) / sqrt(var + eps),
    alpha = gain * scale, per output channel o over its D = C_in * k * k weights.

    With u the per-example gradient for w_hat_o, the gradient for w_o is
    (alpha / s) (u - mean(u) - z mean(u z)) (the standardisation's backward), whose squared norm
    is (alpha / s)^2 (|u|^2 - (1.u)^2 / D - (2 - r)(z.u)^2 / D) with r = |z|^2 / D, because z
    sums to zero. Materialised, every term is a row reduction of the per-example u. On the
    ghost route |u|^2 is a ghost norm with g scaled by alpha / s, 1.u = sum_s g_s * (window sum
    of the input) is one box filter, and z.u = sum_s g_s * conv(x, z)_s reads conv(x, z) off
    the layer's output (recomputed when the output is missing or a gain is near zero). The
    clipped sum is linear in u, so it is the clipped sum for w_hat pulled back through timm's
    own standardisation by autograd.
    """

    def needs_output(self, layer: nn.Module, output: torch.Tensor, n: int, strategy: str) -> bool:
        # Only the ghost route reads conv(x, z) off the output; the materialised route has
        # every per-example gradient, from which 1.u and z.u are row sums.
        d, s = layer.weight[0].numel(), output[0, 0].numel() * (output.shape[0] // n)
        return use_ghost(d, output.shape[1], s, strategy)

    @staticmethod
    def _standardised(layer: ScaledStdConv2d, weight: torch.Tensor, gain: torch.Tensor):
        flat = weight.reshape(1, layer.out_channels, -1)
        return F.batch_norm(
            flat,
            None,
            None,
            weight=(gain * layer.scale).view(-1),
            training=True,
            momentum=0.0,
            eps=layer.eps,
        ).reshape_as(weight)

    @staticmethod
    def _ghost_terms(layer, x, g, n, z, w, alpha_over_s, output):
        """|u|^2, 1.u and the unscaled z.u on the ghost route, from (input, output gradient)."""
        g_scaled = g * alpha_over_s.view(1, -1, 1, 1)
        u_sq = _ghost_conv_norm_sq(layer, n, x, g_scaled)
        window_sum = F.conv2d(
            x.sum(1, keepdim=True),
            torch.ones_like(w[:1, :1]),
            stride=layer.stride,
            padding=layer.padding,
        )
        one_u = positions((g_scaled * window_sum).flatten(2), n).sum(-1)  # (N, O)
        alpha = layer.gain.detach().view(-1).to(g.dtype) * layer.scale
        if output is not None and bool((alpha.abs() > 1e-4).all()):
            # conv(x, z) from the layer's own output
            z_x = output.to(g.dtype)
            if layer.bias is not None:
                z_x = z_x - layer.bias.detach().to(g.dtype).view(1, -1, 1, 1)
            z_x = z_x / alpha.view(1, -1, 1, 1)
        else:  # no output, or a gain near zero: recompute rather than divide by it
            z_x = F.conv2d(x, z.view_as(w), stride=layer.stride, padding=layer.padding)
        return u_sq, one_u, positions((g * z_x).flatten(2), n).sum(-1)

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        n = state.n
        x = inputs[0].to(g.dtype)
        w = layer.weight.detach().to(g.dtype)
        d = w[0].numel()
        flat = w.reshape(w.shape[0], -1)
        var = flat.var(dim=1, unbiased=False)
        z = (flat - flat.mean(dim=1, keepdim=True)) / torch.sqrt(var + layer.eps).unsqueeze(1)
        r = z.square().mean(dim=1)
        alpha_over_s = (
            layer.gain.detach().view(-1).to(g.dtype) * layer.scale / torch.sqrt(var + layer.eps)
        )
        if not self.needs_output(layer, g, n, strategy):
            # materialised: every term is a row reduction of u (unscaled)
            grads = state.per_example = conv_grads(layer, x, g, n)
            u_sq = (row_norm_sq(grads) * alpha_over_s.square()).sum(-1)
            one_u = grads.sum(-1) * alpha_over_s
            z_u_plain = row_dot(grads, z)  # (N, O)
        else:
            u_sq, one_u, z_u_plain = self._ghost_terms(layer, x, g, n, z, w, alpha_over_s, output)
        z_u = z_u_plain * alpha_over_s  # z.u for w_hat's gradient scaled by alpha / s
        total = u_sq - (one_u.square() + (2 - r) * z_u.square()).sum(-1) / d
        # gain gradient: scale * z.u of the unscaled u
        total = total + (layer.scale * z_u_plain).square().sum(-1)
        if layer.bias is not None:
            total = total + bias_norm_sq(state, g)
        return total

    def clipped_sum(self, layer, inputs, g, coef, state):
        u = self._weight_sum(layer, inputs, g, coef, state)
        with torch.enable_grad():
            weight = layer.weight.detach().to(u.dtype).requires_grad_(True)
            gain = layer.gain.detach().to(u.dtype).requires_grad_(True)
            w_hat = self._standardised(layer, weight, gain)
            dw, dgain = torch.autograd.grad(w_hat, (weight, gain), grad_outputs=u)
        out = {layer.weight: dw, layer.gain: dgain}
        if layer.bias is not None:
            out[layer.bias] = bias_sum(coef, state)
        return out
