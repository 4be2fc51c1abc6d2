"""KernelNorm (Nasirigerdeh et al.): per-window normalisation fused into the convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn

from bkclip import (
    MaterialisableRule,
    bias_norm_sq,
    bias_sum,
    conv_per_example,
    ghost_windows_norm_sq,
    per_example,
    register_clip_rule,
    row_norm_sq,
    unfold,
    use_ghost,
    weighted_sum,
)
from norms.errors import NormSpecError
from norms.registry import register_norm


def _check_stats_params(dropout: float, eps: float, name: str = "dropout") -> None:
    """Refuse at construction what F.dropout or the statistics would refuse mid-run."""
    if not 0.0 <= dropout < 1.0:
        raise NormSpecError(f"kernel_norm: {name}={dropout} is not a probability in [0, 1)")
    if eps <= 0:
        raise NormSpecError(f"kernel_norm: eps={eps} must be > 0")


def _stats_input(x: torch.Tensor, p: float, active: bool) -> torch.Tensor:
    """The input the statistics are computed from: dropped out with probability ``p``.

    As in the authors' code, the mask is drawn per input element (with the usual 1/(1-p)
    scaling) and shared by all windows that cover the element; it never touches the values
    that are convolved, only the statistics.
    """
    if p > 0 and active:
        return F.dropout(x, p, training=True)
    return x


def window_stats(
    x: torch.Tensor, kernel_size: int, stride: int, padding: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/sqrt(biased var + eps) of every (C_in x k x k) window of the zero-padded input.

    Computed with a box filter over the channel means (``avg_pool2d`` over the zero-padded map),
    so nothing is unfolded. Returns two tensors of shape (N, 1, H_out, W_out).
    """
    # Pad the two 1-channel maps explicitly: avg_pool2d's own padding is capped at k // 2.
    pad = (padding,) * 4
    first = F.avg_pool2d(F.pad(x.mean(1, keepdim=True), pad), kernel_size, stride)
    second = F.avg_pool2d(F.pad(x.square().mean(1, keepdim=True), pad), kernel_size, stride)
    var = (second - first.square()).clamp_min(0.0)
    return first, torch.rsqrt(var + eps)


class KNConvCore(nn.Module):
    """The trainable part of KNConv2d: ``(conv(x, W) - mu * sum(W)) * inv_std + b``.

    The statistics arrive as forward inputs rather than being computed inside, so Opacus'
    activation hook captures exactly the statistics used in the forward pass (dropout mask
    included) and the registered grad sampler below needs no recomputation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        *,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        # nn.Conv2d's default initialisation, without keeping a Conv2d that Opacus would hook
        # (it depends on the weight's shape alone, so the conv's geometry is left out).
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, bias=bias, device=device, dtype=dtype
        )
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor, mu: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight, None, self.stride, self.padding)
        out = (out - mu * self.weight.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)) * inv_std
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


@register_grad_sampler(KNConvCore)
def knconv_grad_sample(
    layer: KNConvCore, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of KNConvCore.

    With g the gradient of the output and s = inv_std,
    dL/dW[o, c, i, j] = sum_l g[o, l] s[l] (x_unf[c, i, j, l] - mu[l]): the conv weight
    gradient with backprops g*s, minus a rank-one correction from the window means.
    """
    x, mu, inv_std = activations[0], activations[1], activations[2]
    n = x.shape[0]
    ret: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        scaled = (backprops * inv_std).flatten(2)  # (N, O, L)
        cols = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)
        grad = torch.bmm(scaled, cols.transpose(1, 2))  # (N, O, C*k*k)
        grad = grad - (scaled * mu.flatten(2)).sum(-1, keepdim=True)
        ret[layer.weight] = grad.view(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret


@register_clip_rule(KNConvCore)
class KNConvClipRule(MaterialisableRule):
    """Book-keeping rule of KNConvCore: a conv over windows centred by their mean and scaled by
    1/std, i.e. the conv rule with output gradient ``g * inv_std`` and centred windows."""

    def channel_dim(self, layer, g):
        return 1

    @staticmethod
    def _parts(layer: KNConvCore, inputs, g):
        x, mu, inv_std = (t.to(g.dtype) for t in inputs)
        return x, mu, g * inv_std

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        n = state.n
        x, mu, gs_ = self._parts(layer, inputs, g)
        d, o = layer.weight[0].numel(), g.shape[1]
        k = (layer.kernel_size, layer.kernel_size)
        if use_ghost(d, o, g[0, 0].numel() * (x.shape[0] // n), strategy):

            def centred(xs, ms):  # windows centred on their mean
                return unfold(xs, k, layer.padding, layer.stride) - ms.flatten(2)

            total = ghost_windows_norm_sq(n, k, x, gs_, centred, mu)
        else:  # sum_s g'_s (a_s - mu_s 1)^T: the conv's gradient minus a rank-one term
            grads = conv_per_example(x, gs_, n, k, layer.stride, layer.padding)
            shift = per_example((gs_ * mu).sum(dim=(2, 3)), n).sum(1)  # (N, O)
            state.per_example = grads.sub_(shift.unsqueeze(-1))
            total = row_norm_sq(state.per_example.flatten(1))
        if layer.bias is not None:  # the bias sees g, not g * inv_std
            total = total + bias_norm_sq(state, g)
        return total

    def clipped_sum(self, layer, inputs, g, coef, state):
        if state.per_example is not None:  # already centred: nothing to subtract
            w = weighted_sum(coef, state).view(layer.weight.shape)
        else:
            x, mu, gs_ = self._parts(layer, inputs, g)
            gc = gs_ * coef.view(-1, 1, 1, 1)
            w = torch.nn.grad.conv2d_weight(
                x, layer.weight.shape, gc, stride=layer.stride, padding=layer.padding
            )
            w = w - (gc * mu).sum(dim=(0, 2, 3)).view(-1, 1, 1, 1)
        out = {layer.weight: w}
        if layer.bias is not None:
            out[layer.bias] = bias_sum(coef, state)
        return out


class KNConv2d(nn.Module):
    """KernelNorm-normalised convolution, computed without unfolding.

    Each (C_in x k x k) window of the zero-padded input is normalised with its own mean and
    biased variance before the convolution; algebraically that is
    ``(conv(x_pad, W) - mu * sum(W)) / sqrt(var + eps) + b`` with per-location statistics.

    Args:
        dropout: Probability of the dropout applied to the input of the statistics only.
        eval_dropout: Keep that dropout at evaluation. The authors' code does (it calls
            dropout without the training flag); the default here is the usual convention, off.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dropout: float = 0.05,
        eval_dropout: bool = False,
        eps: float = 1e-5,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        _check_stats_params(dropout, eps)
        self.dropout, self.eval_dropout, self.eps = dropout, eval_dropout, eps
        self.core = KNConvCore(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            bias=bias,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.core
        stats_x = _stats_input(x, self.dropout, self.training or self.eval_dropout)
        mu, inv_std = window_stats(stats_x, c.kernel_size, c.stride, c.padding, self.eps)
        return c(x, mu, inv_std)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, eval_dropout={self.eval_dropout}, eps={self.eps}"


class KernelNorm2d(nn.Module):
    """Per-pixel KernelNorm over channels (1x1 windows), no affine: the norm of KN heads.

    Args:
        dropout: Dropout probability on the input of the statistics (the authors use 0.5 in
            the head).
        eval_dropout: As in `KNConv2d`.
    """

    def __init__(
        self,
        num_channels: int | None = None,
        *,
        dropout: float = 0.5,
        eval_dropout: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        _check_stats_params(dropout, eps, "head_dropout")
        self.dropout, self.eval_dropout, self.eps = dropout, eval_dropout, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats_x = _stats_input(x, self.dropout, self.training or self.eval_dropout)
        var, mu = torch.var_mean(stats_x, dim=1, keepdim=True, unbiased=False)
        return (x - mu) * torch.rsqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, eval_dropout={self.eval_dropout}, eps={self.eps}"


def knconv2d_unfold_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: int,
    padding: int,
    eps: float,
    stats_x: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition, literally: unfold the windows, normalise each, then convolve.

    Slow and memory hungry; the oracle for `KNConv2d` in tests and benchmarks. ``stats_x``
    (default ``x``) is the input the statistics are taken from, for checking dropout.
    """
    k = weight.shape[-1]
    n, _, h, w = x.shape
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C*k*k, L)
    stat_cols = cols if stats_x is None else F.unfold(stats_x, k, padding=padding, stride=stride)
    var, mu = torch.var_mean(stat_cols, dim=1, keepdim=True, unbiased=False)
    normed = (cols - mu) / torch.sqrt(var + eps)
    out = weight.flatten(1) @ normed  # (N, O, L)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    return out.view(n, weight.shape[0], h_out, w_out)


def _kn_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    dropout: float = 0.05,
    head_dropout: float = 0.5,
    eval_dropout: bool = False,
    eps: float = 1e-5,
) -> KNConv2d:
    return KNConv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        dropout=dropout,
        eval_dropout=eval_dropout,
        eps=eps,
    )


@register_norm(
    "kernel_norm",
    fused_conv_factory=_kn_conv,
    grad_sampler="custom",
    grad_sample_modes=("hooks",),
    oracle_params={"dropout": 0.0, "head_dropout": 0.0},
)
def kernel_norm(
    num_channels: int,
    *,
    dropout: float = 0.05,
    head_dropout: float = 0.5,
    eval_dropout: bool = False,
    eps: float = 1e-5,
    device=None,
    dtype=None,
) -> KernelNorm2d:
    """KernelNorm: every conv+norm becomes a KNConv2d; a lone norm is per-pixel KernelNorm.

    ``dropout`` acts on the statistics of the KNConv2d layers, ``head_dropout`` on those of the
    standalone per-pixel layers (the authors' head uses 0.5). The KNConv2d per-sample gradients
    come from this project's registered Opacus grad sampler (``grad_sampler="custom"``).
    """
    return KernelNorm2d(num_channels, dropout=head_dropout, eval_dropout=eval_dropout, eps=eps)
