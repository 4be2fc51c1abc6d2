"""Book-keeping per-sample clipping (Bu et al. 2023): one backward pass, no per-sample gradients.

Why this exists: Opacus' hooks path materialises every per-sample gradient (B x #params floats)
and lets autograd compute the non-private weight gradients it then throws away; its ghost
path avoids the first cost but runs two full backward passes and has no ghost norm for
convolutions. Here one forward pass records each trainable layer's inputs, one
``torch.autograd.grad`` call asks autograd only for the gradients of the layer *outputs*
(so no weight gradient is ever computed by autograd), and then, per layer:

1. each example's gradient norm is computed from (input, output gradient), either with the
   ghost-norm identity ``||sum_s g_s a_s^T||^2 = sum((A A^T) * (G G^T))`` over the example's
   positions s (cheap when few positions carry many channels, deep in a ResNet) or by
   materialising that one layer's per-example gradients (cheap near the input), whichever costs
   fewer multiply-adds;
2. once every layer's norms are known, the clipping factors c_i are fixed and each layer's
   clipped sum ``sum_i c_i grad_i`` is one ordinary weight-gradient computation with the output
   gradients scaled by c_i (a single GEMM for a convolution).

Memory: between its norm and its sum a layer keeps only what the sum needs, its per-example
gradients where they were materialised and are smaller than its (input, output gradient), else
those two; ghost Gram products and normalised activations are built a slice of examples at a
time; each layer's kept tensors are dropped as soon as its sum is taken. So the step's peak
stays close to the non-private step's (autograd frees activations as the kept tensors grow).

The K augmented views of an example form one privacy unit: its loss is the mean over the views,
its gradient the sum of the per-view gradients of that loss, and its norm is taken over all K x T
positions together. Layers without a dedicated rule fall back to Opacus' per-layer grad sampler
(or its functorch path), materialised one layer at a time. Every rule is checked against the
one-example oracle in ``tests/test_bk.py``. timm's weight-standardised convolution has its own
closed-form rule (`_WSConvRule`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from timm.layers import ScaledStdConv2d
from torch import nn

from norms.dp_batch_norm import ChannelAffine
from norms.kernel_norm import KNConvCore

STRATEGIES = ("auto", "ghost", "materialise")
KEEP = ("auto", "per_example", "inputs")


def _per_example(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N*K, ...) -> (N, K, ...)."""
    return t.reshape(n, -1, *t.shape[1:])


def _positions(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N*K, C, L) -> (N, C, K*L): an example's K views as one sequence of positions."""
    nk, c, length = t.shape
    return t.view(n, nk // n, c, length).permute(0, 2, 1, 3).reshape(n, c, -1)


def _sequence_norm_sq(
    a: torch.Tensor, g: torch.Tensor, strategy: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Squared norms of ``G_i = g_i a_i^T`` for a (N, D, S), g (N, O, S), and G_i if it was built.

    Ghost: N * S^2 * (D + O) multiply-adds; materialised: N * S * D * O. Materialising wins
    where S is large and D * O small (early layers), so the kept G_i are the small ones.
    """
    if _use_ghost(a.shape[1], g.shape[1], a.shape[2], strategy):
        return ((a.transpose(1, 2) @ a) * (g.transpose(1, 2) @ g)).sum(dim=(1, 2)), None
    per_example = g @ a.transpose(1, 2)  # (N, O, D)
    return _row_norm_sq(per_example.flatten(1)), per_example


def _use_ghost(d: int, o: int, s: int, strategy: str) -> bool:
    """Ghost norms cost S^2 (D + O) per example, materialising S D O: take the cheaper."""
    return strategy == "ghost" or (strategy == "auto" and s * (d + o) < d * o)


#: Ghost norms and the affine layers' per-view gradients are computed over up to this many
#: slices of the examples, so their temporaries (unfolded windows, S x S Gram matrices,
#: normalised activations) take a fraction of the memory they would take for the whole batch;
#: temporaries under `_SLICE_BYTES` are not split, since a small slice costs more in overhead
#: than it saves.
_SLICES = 8
_SLICE_BYTES = 4 * 2**20


def _slices(temporary_bytes: int) -> int:
    """How many slices to compute a temporary of this total size in."""
    return max(1, min(_SLICES, -(-temporary_bytes // _SLICE_BYTES)))


def _by_examples(
    n: int, temporary_bytes: int, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor
) -> torch.Tensor:
    """``fn(*slices, examples)`` over slices of whole examples (all K views of each), joined
    along the first dimension; each tensor is (N*K, ...), and ``temporary_bytes`` what ``fn``
    would allocate for the whole batch."""
    k = tensors[0].shape[0] // n
    step = -(-n // _slices(temporary_bytes))
    return torch.cat(
        [
            fn(*(t[i * k : (i + step) * k] for t in tensors), min(step, n - i))
            for i in range(0, n, step)
        ]
    )


def _ghost_conv_norm_sq(layer: nn.Conv2d, n: int, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Ghost squared norms of a conv's per-example weight gradients for input x and output
    gradient g, both (N*K, ...), a slice of examples at a time."""

    def one(xs: torch.Tensor, gs: torch.Tensor, m: int) -> torch.Tensor:
        a = _positions(_ConvRule._cols(layer, xs), m)  # (m, D, K*T)
        return _sequence_norm_sq(a, _positions(gs.flatten(2), m), "ghost")[0]

    window = layer.weight[0, 0].numel()
    return _by_examples(n, _nbytes(x) * window, one, x, g)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a narrower float type (bf16/fp16 under autocast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _exact_arithmetic(t: torch.Tensor):
    """Autocast off for the per-example norms and clipped sums.

    Under bf16 autocast the forward and backward run in bf16, but the norms and the sums must
    be computed from the same values to float32 precision: a norm rounded to bf16 (~0.4%)
    would let an example's clipped contribution exceed C, i.e. break the sensitivity bound.
    The rules upcast what they read (inputs, output gradients) to the output gradient's dtype,
    which is at least float32 here.
    """
    return torch.autocast(t.device.type, enabled=False)


def _row_norm_sq(t: torch.Tensor) -> torch.Tensor:
    """``(t ** 2).sum(-1)`` without a temporary the size of ``t``."""
    return torch.linalg.vector_norm(t, dim=-1).square()


def _row_dot(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(t * z).sum(-1)`` for t (N, O, D) and z (O, D), a slice of examples at a time so the
    product never takes the memory of all of ``t``."""
    return _by_examples(t.shape[0], _nbytes(t), lambda part, _m: (part * z).sum(-1), t)


def _conv_per_example(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, n: int) -> torch.Tensor:
    """Per-example weight gradients ``sum_s g_s a_s^T`` of a conv, shape (N, O, D).

    With one view per example this is the weight gradient of a grouped convolution with the
    batch as groups (oneDNN/cuDNN's own kernel, no unfolded copy of the input); with K views
    the views' positions are unfolded and summed with one batched matmul.
    """
    nk, c = x.shape[:2]
    o = g.shape[1]
    kernel = tuple(layer.weight.shape[2:])
    if nk == n:
        w = torch.nn.grad.conv2d_weight(
            x.reshape(1, nk * c, *x.shape[2:]),
            (nk * o, c, *kernel),
            g.reshape(1, nk * o, *g.shape[2:]),
            stride=layer.stride,
            padding=layer.padding,
            groups=nk,
        )
        return w.view(n, o, -1)
    a = _positions(F.unfold(x, kernel, padding=layer.padding, stride=layer.stride), n)
    return _positions(g.flatten(2), n) @ a.transpose(1, 2)


class _Rule:
    """Per-layer rule: per-example squared gradient norm, and the clipped sum of gradients.

    ``ctx`` is a per-layer scratch dict shared by the two calls of one step (e.g. per-example
    gradients materialised for the norm and reused for the sum); ``output`` is the layer's
    forward output.
    """

    def needs_output(self, layer: nn.Module, output: torch.Tensor, n: int, strategy: str) -> bool:
        """Whether `norm_sq` needs the layer's forward output (kept from the forward pass,
        so only asked for where nothing cheaper will do)."""
        return False

    def releases(self, ctx: dict, inputs: list[torch.Tensor], g: torch.Tensor) -> bool:
        """Whether, after `norm_sq`, the clipped sum needs neither the input nor the output
        gradient (they are then dropped at once, in the middle of the backward pass)."""
        return False

    def norm_sq(
        self,
        layer: nn.Module,
        inputs: list[torch.Tensor],
        g: torch.Tensor,
        n: int,
        strategy: str,
        ctx: dict,
        output: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError

    def clipped_sum(
        self,
        layer: nn.Module,
        inputs: list[torch.Tensor],
        g: torch.Tensor,
        coef: torch.Tensor,
        ctx: dict,
    ) -> dict[nn.Parameter, torch.Tensor]:
        """``sum_i c_i grad_i``; ``coef`` is per view (c_i repeated K times)."""
        raise NotImplementedError


class _ConvRule(_Rule):
    """nn.Conv2d (groups=1, dilation=1)."""

    def releases(self, ctx, inputs, g):
        # Keep whichever is smaller until the clipped sum: the per-example gradients (the sum
        # is then a cheap weighted reduction) or the input and output gradient (the sum is
        # then one weight-gradient GEMM, the non-private step's own cost for this layer).
        kept = ctx.get("per_example")
        if kept is None:
            return False
        smaller = _nbytes(kept) <= _nbytes(g) + sum(_nbytes(t) for t in inputs)
        if ctx["keep"] == "inputs" or (ctx["keep"] == "auto" and not smaller):
            ctx["per_example"] = None
            return False
        return True

    @staticmethod
    def _cols(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)

    def norm_sq(self, layer, inputs, g, n, strategy, ctx, output):
        x = inputs[0].to(g.dtype)
        d, o = layer.weight[0].numel(), g.shape[1]
        if _use_ghost(d, o, g[0, 0].numel() * (x.shape[0] // n), strategy):
            total = _ghost_conv_norm_sq(layer, n, x, g)
        else:
            per_example = ctx["per_example"] = _conv_per_example(layer, x, g, n)
            total = _row_norm_sq(per_example.flatten(1))
        if layer.bias is not None:
            bias_per_view = ctx["bias_per_view"] = g.sum(dim=(2, 3))
            total = total + _per_example(bias_per_view, n).sum(1).square().sum(-1)
        return total

    @staticmethod
    def _weight_sum(layer, inputs, g, coef, ctx):
        """sum_i c_i u_i for the conv weight: from kept per-example gradients, or one GEMM."""
        kept = ctx.get("per_example")
        if kept is not None:
            c = coef.view(ctx["n"], -1)[:, 0]
            return torch.einsum("n,nod->od", c.to(kept.dtype), kept).view(layer.weight.shape)
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

    def clipped_sum(self, layer, inputs, g, coef, ctx):
        out = {layer.weight: self._weight_sum(layer, inputs, g, coef, ctx)}
        if layer.bias is not None:
            out[layer.bias] = coef @ ctx["bias_per_view"].to(coef.dtype)
        return out


class _WSConvRule(_ConvRule):
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

    def needs_output(self, layer, output, n, strategy):
        # Only the ghost route reads conv(x, z) off the output; the materialised route has
        # every per-example gradient, from which 1.u and z.u are row sums.
        d, s = layer.weight[0].numel(), output[0, 0].numel() * (output.shape[0] // n)
        return _use_ghost(d, output.shape[1], s, strategy)

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

    def norm_sq(self, layer, inputs, g, n, strategy, ctx, output):
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
            per_example = ctx["per_example"] = _conv_per_example(layer, x, g, n)
            u_sq = (_row_norm_sq(per_example) * alpha_over_s.square()).sum(-1)
            one_u = per_example.sum(-1) * alpha_over_s
            z_u_plain = _row_dot(per_example, z)  # (N, O)
        else:
            g_scaled = g * alpha_over_s.view(1, -1, 1, 1)
            u_sq = _ghost_conv_norm_sq(layer, n, x, g_scaled)
            window_sum = F.conv2d(
                x.sum(1, keepdim=True),
                torch.ones_like(w[:1, :1]),
                stride=layer.stride,
                padding=layer.padding,
            )
            one_u = _positions((g_scaled * window_sum).flatten(2), n).sum(-1)  # (N, O)
            alpha = layer.gain.detach().view(-1).to(g.dtype) * layer.scale
            if output is not None and bool((alpha.abs() > 1e-4).all()):
                # conv(x, z) from the layer's own output
                z_x = output.to(g.dtype)
                if layer.bias is not None:
                    z_x = z_x - layer.bias.detach().to(g.dtype).view(1, -1, 1, 1)
                z_x = z_x / alpha.view(1, -1, 1, 1)
            else:  # no output, or a gain near zero: recompute rather than divide by it
                z_x = F.conv2d(x, z.view_as(w), stride=layer.stride, padding=layer.padding)
            z_u_plain = _positions((g * z_x).flatten(2), n).sum(-1)
        z_u = z_u_plain * alpha_over_s  # z.u for w_hat's gradient scaled by alpha / s
        total = u_sq - (one_u.square() + (2 - r) * z_u.square()).sum(-1) / d
        # gain gradient: scale * z.u of the unscaled u
        total = total + (layer.scale * z_u_plain).square().sum(-1)
        if layer.bias is not None:
            bias_per_view = ctx["bias_per_view"] = g.sum(dim=(2, 3))
            total = total + _per_example(bias_per_view, n).sum(1).square().sum(-1)
        return total

    def clipped_sum(self, layer, inputs, g, coef, ctx):
        u = self._weight_sum(layer, inputs, g, coef, ctx)
        with torch.enable_grad():
            weight = layer.weight.detach().to(u.dtype).requires_grad_(True)
            gain = layer.gain.detach().to(u.dtype).requires_grad_(True)
            w_hat = self._standardised(layer, weight, gain)
            dw, dgain = torch.autograd.grad(w_hat, (weight, gain), grad_outputs=u)
        out = {layer.weight: dw, layer.gain: dgain}
        if layer.bias is not None:
            out[layer.bias] = coef @ ctx["bias_per_view"].to(coef.dtype)
        return out


class _KNConvRule(_ConvRule):
    """KNConvCore: a conv over windows centred by their mean and scaled by 1/std."""

    def _parts(self, layer: KNConvCore, inputs, g):
        x, mu, inv_std = (t.to(g.dtype) for t in inputs)
        return x, mu, g * inv_std

    def norm_sq(self, layer, inputs, g, n, strategy, ctx, output):
        x, mu, gs_ = self._parts(layer, inputs, g)
        d, o = layer.weight[0].numel(), g.shape[1]
        if _use_ghost(d, o, g[0, 0].numel() * (x.shape[0] // n), strategy):

            def centred(xs, ms, gs, m):  # windows centred on their mean
                a = _positions(self._cols(layer, xs) - ms.flatten(2), m)
                return _sequence_norm_sq(a, _positions(gs.flatten(2), m), "ghost")[0]

            window = layer.weight[0, 0].numel()
            total = _by_examples(n, _nbytes(x) * window, centred, x, mu, gs_)
        else:  # sum_s g'_s (a_s - mu_s 1)^T: the conv's gradient minus a rank-one term
            per_example = _conv_per_example(layer, x, gs_, n)
            shift = _per_example((gs_ * mu).sum(dim=(2, 3)), n).sum(1)  # (N, O)
            per_example = ctx["per_example"] = per_example.sub_(shift.unsqueeze(-1))
            total = _row_norm_sq(per_example.flatten(1))
        if layer.bias is not None:  # the bias sees g, not g * inv_std
            bias_per_view = ctx["bias_per_view"] = g.sum(dim=(2, 3))
            total = total + _per_example(bias_per_view, n).sum(1).square().sum(-1)
        return total

    def clipped_sum(self, layer, inputs, g, coef, ctx):
        if ctx.get("per_example") is not None:  # already centred: nothing to subtract
            c = coef.view(ctx["n"], -1)[:, 0]
            kept = ctx["per_example"]
            w = torch.einsum("n,nod->od", c.to(kept.dtype), kept).view(layer.weight.shape)
        else:
            x, mu, gs_ = self._parts(layer, inputs, g)
            gc = gs_ * coef.view(-1, 1, 1, 1)
            w = torch.nn.grad.conv2d_weight(
                x, layer.weight.shape, gc, stride=layer.stride, padding=layer.padding
            )
            w = w - (gc * mu).sum(dim=(0, 2, 3)).view(-1, 1, 1, 1)
        out = {layer.weight: w}
        if layer.bias is not None:
            out[layer.bias] = coef @ ctx["bias_per_view"].to(coef.dtype)
        return out


class _LinearRule(_Rule):
    """nn.Linear on (N*K, D) inputs."""

    def norm_sq(self, layer, inputs, g, n, strategy, ctx, output):
        a = _per_example(inputs[0].to(g.dtype), n).transpose(1, 2)  # (N, D, K)
        gs = _per_example(g, n).transpose(1, 2)  # (N, O, K)
        total, _ = _sequence_norm_sq(a, gs, strategy)
        if layer.bias is not None:
            total = total + gs.sum(-1).square().sum(-1)
        return total

    def clipped_sum(self, layer, inputs, g, coef, ctx):
        gc = g * coef.view(-1, 1)
        out = {layer.weight: gc.t() @ inputs[0].to(g.dtype)}
        if layer.bias is not None:
            out[layer.bias] = gc.sum(0)
        return out


class _AffineRule(_Rule):
    """Per-channel affine layers whose per-view gradients are a few numbers per channel:
    GroupNorm, LayerNorm and ChannelAffine. They are cheap to materialise."""

    def per_view(self, layer, inputs, g) -> dict[nn.Parameter, torch.Tensor]:
        x = inputs[0].to(g.dtype)
        if isinstance(layer, nn.GroupNorm):
            xh = F.group_norm(x, layer.num_groups, eps=layer.eps)
            dims: tuple[int, ...] = tuple(range(2, x.dim()))
        elif isinstance(layer, nn.LayerNorm):
            xh = F.layer_norm(x, layer.normalized_shape, eps=layer.eps)
            dims = tuple(range(1, x.dim() - len(layer.normalized_shape)))
        else:  # ChannelAffine
            xh, dims = x, (2, 3)
        out = {}
        if layer.weight is not None and layer.weight.requires_grad:
            out[layer.weight] = (xh * g).sum(dim=dims) if dims else xh * g
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.sum(dim=dims) if dims else g
        return out

    def releases(self, ctx, inputs, g):
        return True

    def norm_sq(self, layer, inputs, g, n, strategy, ctx, output):
        # The normalised input is recomputed a slice at a time.
        rows = -(-g.shape[0] // _slices(2 * _nbytes(g)))
        slices = [
            self.per_view(layer, [x], gs)
            for x, gs in zip(inputs[0].split(rows), g.split(rows), strict=True)
        ]
        grads = ctx["per_view"] = {p: torch.cat([v[p] for v in slices]) for p in slices[0]}
        return sum(_per_example(v, n).sum(1).flatten(1).square().sum(1) for v in grads.values())

    def clipped_sum(self, layer, inputs, g, coef, ctx):
        return {p: torch.einsum("v,v...->...", coef, v) for p, v in ctx["per_view"].items()}


class _FallbackRule(_Rule):
    """Any other layer: Opacus' grad sampler for its exact type, or Opacus' functorch path,
    one layer at a time (e.g. timm's weight-standardised convolutions)."""

    def per_view(self, layer, inputs, g):
        inputs = [t.to(g.dtype) if t.is_floating_point() else t for t in inputs]
        sampler = GradSampleModule.GRAD_SAMPLERS.get(type(layer))
        if sampler is not None:
            return sampler(layer, inputs, g)
        return ft_compute_per_sample_gradient(layer, inputs, g)

    def norm_sq(self, layer, inputs, g, n, strategy, ctx, output):
        grads = self.per_view(layer, inputs, g)
        return sum(_per_example(v, n).sum(1).flatten(1).square().sum(1) for v in grads.values())

    def clipped_sum(self, layer, inputs, g, coef, ctx):
        # Recomputed rather than kept: a fallback layer may be large.
        grads = self.per_view(layer, inputs, g)
        return {p: torch.einsum("v,v...->...", coef.to(v.dtype), v) for p, v in grads.items()}


_RULES: dict[type, _Rule] = {
    nn.Conv2d: _ConvRule(),
    ScaledStdConv2d: _WSConvRule(),
    KNConvCore: _KNConvRule(),
    nn.Linear: _LinearRule(),
    nn.GroupNorm: _AffineRule(),
    nn.LayerNorm: _AffineRule(),
    ChannelAffine: _AffineRule(),
}


def rule_for(layer: nn.Module) -> str:
    """The rule a layer takes: ``bk`` (a dedicated rule above) or ``fallback``."""
    return "bk" if _usable(layer) else "fallback"


def _usable(layer: nn.Module) -> bool:
    rule = _RULES.get(type(layer))
    if isinstance(rule, _ConvRule) and isinstance(layer, nn.Conv2d):
        return (
            layer.groups == 1
            and tuple(layer.dilation) == (1, 1)
            and isinstance(layer.padding, tuple)
        )
    return rule is not None


def _rule(layer: nn.Module) -> _Rule:
    return _RULES[type(layer)] if _usable(layer) else _FallbackRule()


def layer_norms(
    layer: nn.Module,
    inputs: list[torch.Tensor],
    grad_output: torch.Tensor,
    *,
    output: torch.Tensor | None = None,
    strategy: str = "auto",
) -> torch.Tensor:
    """Per-example norms of one layer's parameter gradients, one view per example, by the rule
    the clipper takes for it (ghost or materialised, as ``strategy`` says).

    For benchmarks and tests of a single layer. ``output`` is the layer's forward output; timm's
    weight-standardised conv reads it on the ghost route and recomputes it when it is missing.
    """
    rule = _rule(layer)
    n = grad_output.shape[0]
    g = _at_least_fp32(grad_output.detach())
    with _exact_arithmetic(g):
        ctx = {"n": n, "keep": "auto"}
        return rule.norm_sq(layer, list(inputs), g, n, strategy, ctx, output).sqrt()


class BookKeepingClipper:
    """Clip per-example gradients of ``model`` to a norm bound and sum them, in one backward pass.

    Args:
        model: The model; its trainable layers are found once, by exact type.
        strategy: ``auto`` picks ghost norms or materialisation per layer by cost; ``ghost`` and
            ``materialise`` force one (for tests and benchmarks).
        keep: What a conv layer whose per-example gradients were materialised keeps for its
            clipped sum: ``auto`` the smaller of those gradients and its (input, output
            gradient); ``per_example`` or ``inputs`` force one (for tests and benchmarks).
    """

    def __init__(self, model: nn.Module, strategy: str = "auto", keep: str = "auto"):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
        self.model, self.strategy, self.keep = model, strategy, keep
        self.layers = [
            m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self.rules = {id(m): _rule(m) for m in self.layers}
        self.last_norms: torch.Tensor | None = None

    def accumulate(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        max_grad_norm: float,
        views: int | None = None,
        loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
    ) -> float:
        """Add ``sum_i clip(grad_i)`` for the examples of ``x`` to each parameter's
        ``summed_grad``; returns the mean loss.

        Args:
            x: ``(N, K, C, H, W)`` views (or ``(N, C, H, W)`` for one view each).
            y: ``(N,)`` labels.
            max_grad_norm: The clipping bound C.
        """
        if x.dim() == 4:
            x = x.unsqueeze(1)
        n, k = x.shape[0], x.shape[1]
        if n == 0:
            return float("nan")
        entries: list[dict] = []
        parts: list[torch.Tensor] = []

        def on_grad(entry: dict, g: torch.Tensor) -> None:
            # Runs inside the backward pass, as soon as this layer's output gradient exists.
            g = g.detach()
            rule, ctx = self.rules[id(entry["layer"])], entry["ctx"]
            with _exact_arithmetic(g):
                parts.append(
                    rule.norm_sq(
                        entry["layer"],
                        entry["inputs"],
                        _at_least_fp32(g),
                        n,
                        self.strategy,
                        ctx,
                        entry["output"],
                    ).double()
                )
            entry["output"], entry["reached"] = None, True
            if rule.releases(ctx, entry["inputs"], g):  # the kept gradients are all we need
                entry["inputs"] = None
            else:
                entry["g"] = g

        def on_forward(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if any(e["layer"] is module for e in entries):
                raise NotImplementedError("a layer ran twice in one forward pass (weight tying)")
            rule = self.rules[id(module)]
            entry = {
                "layer": module,
                "inputs": [t.detach() for t in inputs if torch.is_tensor(t)],
                "output": output.detach()
                if rule.needs_output(module, output, n, self.strategy)
                else None,
                "g": None,
                "reached": False,
                "ctx": {"n": n, "keep": self.keep},
            }
            entries.append(entry)
            output.register_hook(functools.partial(on_grad, entry))

        handles = [m.register_forward_hook(on_forward) for m in self.layers]
        try:
            # Asking for the input's gradient drives the backward pass through every layer while
            # autograd computes no parameter gradient at all.
            x_in = x.flatten(0, 1).detach().requires_grad_(True)
            out = self.model(x_in)
        finally:
            for h in handles:
                h.remove()
        per_view = loss_fn(out, y.repeat_interleave(k), reduction="none")
        # Example i's loss is the mean over its K views; summing over examples makes each
        # output gradient the gradient of one example's own loss.
        torch.autograd.grad(per_view.sum() / k, x_in)
        # An N-vector: accumulating it in float64 costs nothing and keeps fp64 checks exact.
        norms = torch.stack(parts).sum(0).sqrt() if parts else torch.zeros(n, device=x.device)
        self.last_norms = norms
        # Opacus' clipping factor, so both paths clip identically.
        coef = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0).repeat_interleave(k)
        # Each layer's kept tensors are dropped as soon as its sum is taken.
        while entries:
            entry = entries.pop()
            layer, g, ctx = entry["layer"], entry["g"], entry["ctx"]
            if not entry["reached"]:
                continue  # the loss does not depend on this layer
            if g is not None:
                g = _at_least_fp32(g)
            dtype = g.dtype if g is not None else next(layer.parameters()).dtype
            with _exact_arithmetic(coef):
                sums = self.rules[id(layer)].clipped_sum(
                    layer, entry["inputs"], g, coef.to(dtype), ctx
                )
            del entry, g, ctx
            for p, value in sums.items():
                value = value.to(p.dtype).view_as(p)
                if getattr(p, "summed_grad", None) is None:
                    p.summed_grad = value
                else:
                    p.summed_grad += value
            del sums
        return float(per_view.detach().mean())
