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
positions together.

Each layer class has its own rule, looked up by exact class in the registry of
`norms.clipping`: this module registers the rules of torch's and timm's layers (Conv2d, timm's
weight-standardised conv, Linear, GroupNorm, LayerNorm); a norm registers the rules of its own
layers in its own file. A class registered with `norms.clipping.register_clip_fallback` takes
Opacus' per-layer grad sampler (or its functorch path), materialised one layer at a time; any
other trainable layer without a rule is an error. Every rule is checked against the one-example
oracle in ``tests/test_bk.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from timm.layers import ScaledStdConv2d
from torch import nn

from norms.clipping import (
    KEEP,
    STRATEGIES,
    AffineRule,
    ClipRule,
    ClipRuleError,
    LayerState,
    MaterialisableRule,
    bias_norm_sq,
    bias_sum,
    clip_rule,
    conv_per_example,
    ghost_windows_norm_sq,
    per_example,
    positions,
    register_clip_rule,
    row_dot,
    row_norm_sq,
    sequence_norm_sq,
    unfold,
    use_ghost,
    weighted_sum,
)


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


def _conv_grads(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, n: int) -> torch.Tensor:
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

    def channel_dim(self, layer, g):
        return 1

    def check(self, layer):
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
            state.per_example = _conv_grads(layer, x, g, n)
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

    def needs_output(self, layer, output, n, strategy):
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
            grads = state.per_example = _conv_grads(layer, x, g, n)
            u_sq = (row_norm_sq(grads) * alpha_over_s.square()).sum(-1)
            one_u = grads.sum(-1) * alpha_over_s
            z_u_plain = row_dot(grads, z)  # (N, O)
        else:
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
            z_u_plain = positions((g * z_x).flatten(2), n).sum(-1)
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


@register_clip_rule(nn.Linear)
class LinearRule(ClipRule):
    """nn.Linear on (N*K, D) inputs."""

    def channel_dim(self, layer, g):
        return g.dim() - 1

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        n = state.n
        a = per_example(inputs[0].to(g.dtype), n).transpose(1, 2)  # (N, D, K)
        gs = per_example(g, n).transpose(1, 2)  # (N, O, K)
        total, _ = sequence_norm_sq(a, gs, strategy)
        if layer.bias is not None:
            total = total + gs.sum(-1).square().sum(-1)
        return total

    def clipped_sum(self, layer, inputs, g, coef, state):
        gc = g * coef.view(-1, 1)
        out = {layer.weight: gc.t() @ inputs[0].to(g.dtype)}
        if layer.bias is not None:
            out[layer.bias] = gc.sum(0)
        return out


@register_clip_rule(nn.GroupNorm)
class GroupNormRule(AffineRule):
    """nn.GroupNorm: the affine multiplies the group-normalised input."""

    def normalised(self, layer, x):
        return F.group_norm(x, layer.num_groups, eps=layer.eps), tuple(range(2, x.dim()))


@register_clip_rule(nn.LayerNorm)
class LayerNormRule(AffineRule):
    """nn.LayerNorm: the affine multiplies the layer-normalised input."""

    def channel_dim(self, layer, g):
        return g.dim() - len(layer.normalized_shape)  # the first normalised dimension

    def normalised(self, layer, x):
        dims = tuple(range(1, x.dim() - len(layer.normalized_shape)))
        return F.layer_norm(x, layer.normalized_shape, eps=layer.eps), dims


class FallbackRule(ClipRule):
    """A class opted into the fallback: Opacus' grad sampler for its exact type, or Opacus'
    functorch path, one layer at a time."""

    def per_view(self, layer, inputs, g):
        inputs = [t.to(g.dtype) if t.is_floating_point() else t for t in inputs]
        sampler = GradSampleModule.GRAD_SAMPLERS.get(type(layer))
        if sampler is not None:
            return sampler(layer, inputs, g)
        return ft_compute_per_sample_gradient(layer, inputs, g)

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        grads = self.per_view(layer, inputs, g)
        return sum(
            per_example(v, state.n).sum(1).flatten(1).square().sum(1) for v in grads.values()
        )

    def clipped_sum(self, layer, inputs, g, coef, state):
        # Recomputed rather than kept: a fallback layer may be large.
        grads = self.per_view(layer, inputs, g)
        return {p: torch.einsum("v,v...->...", coef.to(v.dtype), v) for p, v in grads.items()}


_FALLBACK = FallbackRule()


#: Per-example gradients of a masked layer are built a slice of examples at a time, each slice
#: taking about this much memory (larger than `norms.clipping.SLICE_BYTES`: these are whole
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
    """

    def __init__(self, masks: dict[int, torch.Tensor]):
        self.masks = masks  # 0/1 coordinate masks by parameter id

    @staticmethod
    def _direct(layer) -> str | None:
        if type(layer) is nn.Conv2d and ConvRule().check(layer) is None:
            return "conv"
        if type(layer) is nn.Linear:
            return "linear"
        return None

    @classmethod
    def per_example_grads(cls, layer, inputs, g, n) -> dict[nn.Parameter, torch.Tensor]:
        """Each example's gradient (the sum over its views) of every trainable parameter."""
        out: dict[nn.Parameter, torch.Tensor] = {}
        direct = cls._direct(layer)
        if direct == "conv":
            x = inputs[0].to(g.dtype)
            if layer.weight.requires_grad:
                out[layer.weight] = _conv_grads(layer, x, g, n).view(n, *layer.weight.shape)
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
        views = _FALLBACK.per_view(layer, inputs, g)
        return {p: per_example(v, n).sum(1) for p, v in views.items()}

    def _slices(self, layer, inputs, g, n):
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

    def clipped_sum(self, layer, inputs, g, coef, state):
        direct = self._direct(layer)
        if direct is not None and (direct == "conv" or inputs[0].dim() == 2):
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
        c = coef.view(state.n, -1)[:, 0]
        total: dict[nn.Parameter, torch.Tensor] = {}
        for xs, gs, i, m in self._slices(layer, inputs, g, state.n):
            grads = self.per_example_grads(layer, xs, gs, m)
            for p, v in grads.items():
                part = torch.einsum("n,n...->...", c[i : i + m].to(v.dtype), v)
                total[p] = part if p not in total else total[p] + part
            del grads
        return self._masked(total)


def _rule(layer: nn.Module) -> ClipRule:
    """The layer's registered rule, or the fallback for a class opted into it.

    Raises:
        norms.clipping.ClipRuleError: For a class with neither (names the class).
    """
    rule = clip_rule(layer)
    return _FALLBACK if rule is None else rule


def rule_for(layer: nn.Module) -> str:
    """The rule a layer takes: ``bk`` (a registered rule) or ``fallback`` (a class opted into
    the materialising fallback); raises `norms.clipping.ClipRuleError` for any other."""
    return "fallback" if _rule(layer) is _FALLBACK else "bk"


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that own trainable parameters directly, in registration order."""
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def _trainable(module: nn.Module, recurse: bool) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=recurse) if p.requires_grad]


def check_coverage(model: nn.Module) -> None:
    """Refuse a model whose trainable parameters the clipper would not clip exactly once.

    Every trainable parameter must be owned by exactly one layer, and that layer's rule (or
    its fallback) computes it alone: a parameter shared by two layers would have its norms
    added in quadrature but its sums added linearly (up to sqrt(2) C); a layer with parameters
    of its own *and* children with parameters would have the children's gradients counted by
    both (the fallback differentiates everything below the layer).

    Raises:
        norms.clipping.ClipRuleError: Naming the parameter or layer and why.
    """
    owners: dict[int, list[str]] = {}
    seen: dict[int, set[int]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(module) in seen.setdefault(id(p), set()):
                continue
            seen[id(p)].add(id(module))
            owners.setdefault(id(p), []).append(f"{name or type(model).__name__}.{pname}")
    for names in owners.values():
        if len(names) > 1:
            raise ClipRuleError(
                f"parameter {names[0]} is shared with {', '.join(names[1:])}; the book-keeping "
                "clipper needs each trainable parameter owned by exactly one layer (a shared "
                "one would be clipped as two); untie it or use grad_sample_mode hooks"
            )
    for name, module in model.named_modules():
        if not _trainable(module, recurse=False):
            continue
        nested = [
            f"{name}.{child}" if name else child
            for child, sub in module.named_children()
            if _trainable(sub, recurse=True)
        ]
        if nested:
            raise ClipRuleError(
                f"layer {name or type(model).__name__} ({type(module).__qualname__}) has "
                f"trainable parameters of its own and children with trainable parameters "
                f"({', '.join(nested)}), whose gradients its rule would count again; move its "
                "own parameters into a child module"
            )


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
        state = LayerState(n=n)
        return rule.norm_sq(layer, list(inputs), g, strategy, state, output).sqrt()


@dataclass
class _Entry:
    """One layer's call in a forward pass: what its norm and its clipped sum read."""

    layer: nn.Module
    rule: ClipRule
    inputs: list[torch.Tensor] | None
    output: torch.Tensor | None
    state: LayerState
    keep: torch.Tensor | None = None
    channel_dim: int | None = None
    g: torch.Tensor | None = None
    reached: bool = field(default=False)


class BookKeepingClipper:
    """Clip per-example gradients of ``model`` to a norm bound and sum them, in one backward pass.

    Args:
        model: The model; its trainable layers and their rules are found once, by exact class.
        strategy: ``auto`` picks ghost norms or materialisation per layer by cost; ``ghost`` and
            ``materialise`` force one (for tests and benchmarks).
        keep: What a conv layer whose per-example gradients were materialised keeps for its
            clipped sum: ``auto`` the smaller of those gradients and its (input, output
            gradient); ``per_example`` or ``inputs`` force one (for tests and benchmarks).

    Raises:
        norms.clipping.ClipRuleError: A trainable layer's class has no rule and no fallback, or
            the model's parameters would not each be clipped exactly once (`check_coverage`).
    """

    def __init__(self, model: nn.Module, strategy: str = "auto", keep: str = "auto", sparsity=None):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
        self.model, self.strategy, self.keep = model, strategy, keep
        # `bench.sparsity.Sparsity`: pre-pruned weights and this step's dropped channels.
        self.sparsity = sparsity if sparsity is not None and sparsity.active else None
        check_coverage(model)
        self.layers = trainable_layers(model)
        self.rules = {id(m): _rule(m) for m in self.layers}
        names = {id(m): name for name, m in model.named_modules()}
        self.names = {id(m): names[id(m)] or type(m).__name__ for m in self.layers}
        self.owned_params = {id(m): _trainable(m, recurse=False) for m in self.layers}
        self.owned = {key: {id(p) for p in ps} for key, ps in self.owned_params.items()}
        self.reached: set[int] = set()
        self.last_norms: torch.Tensor | None = None

    @property
    def fallback_classes(self) -> list[str]:
        """Names of the layer classes that take the materialising fallback."""
        return sorted({type(m).__name__ for m in self.layers if self.rules[id(m)] is _FALLBACK})

    @property
    def unreached_layers(self) -> list[str]:
        """Names of the trainable layers no backward pass has reached so far: their parameters
        got noise only (the loss never depended on them, e.g. a layer outside the forward)."""
        return [self.names[id(m)] for m in self.layers if id(m) not in self.reached]

    def _check_inputs(self, module: nn.Module, rule: ClipRule, args: tuple, kwargs: dict) -> None:
        if any(torch.is_tensor(v) for v in kwargs.values()):
            raise ClipRuleError(
                f"layer {self.names[id(module)]} ({type(module).__qualname__}) was called with "
                "tensor keyword arguments, which the book-keeping clipper does not see; pass "
                "them positionally"
            )
        tensors = sum(torch.is_tensor(t) for t in args)
        if rule is _FALLBACK and tensors > 1 and type(module) not in GradSampleModule.GRAD_SAMPLERS:
            raise ClipRuleError(
                f"layer {self.names[id(module)]} ({type(module).__qualname__}) takes {tensors} "
                "tensor inputs, but Opacus' functorch fallback differentiates it with respect "
                "to its first input only; register a clipping rule (or an Opacus grad sampler) "
                "for the class"
            )

    def _check_masked_inputs(self, module: nn.Module, args: tuple) -> None:
        """A masked layer's per-example gradients come from Opacus' sampler for its class or
        its functorch path, which differentiates the first tensor input only."""
        tensors = sum(torch.is_tensor(t) for t in args)
        known = (
            MaskedRule._direct(module) is not None or type(module) in GradSampleModule.GRAD_SAMPLERS
        )
        if tensors > 1 and not known:
            raise ClipRuleError(
                f"layer {self.names[id(module)]} ({type(module).__qualname__}) takes {tensors} "
                "tensor inputs and has pruned or dropped coordinates its rule cannot mask; its "
                "per-example gradients would come from Opacus' functorch path, which "
                "differentiates the first input only: register an Opacus grad sampler for the "
                "class, or a channel_dim on its rule"
            )

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
        entries: list[_Entry] = []
        parts: list[torch.Tensor] = []

        def on_grad(entry: _Entry, g: torch.Tensor) -> None:
            # Runs inside the backward pass, as soon as this layer's output gradient exists.
            g = g.detach()
            if entry.keep is not None:  # dropped channels: out of this layer's norm and sum
                dim = entry.channel_dim
                if g.shape[dim] != entry.keep.numel():
                    raise ClipRuleError(
                        f"layer {self.names[id(entry.layer)]} ({type(entry.layer).__qualname__}):"
                        f" its rule's channel_dim {dim} has {g.shape[dim]} entries in the output "
                        f"gradient, its parameters {entry.keep.numel()} output channels; the "
                        "rule must return None from channel_dim for such a layer"
                    )
                shape = [1] * g.dim()
                shape[dim] = -1
                g = g * entry.keep.to(g.dtype).view(shape)
            with _exact_arithmetic(g):
                parts.append(
                    entry.rule.norm_sq(
                        entry.layer,
                        entry.inputs,
                        _at_least_fp32(g),
                        self.strategy,
                        entry.state,
                        entry.output,
                    ).double()
                )
            entry.output, entry.reached = None, True
            if entry.rule.releases(entry.state, entry.inputs, g):  # the kept gradients suffice
                entry.inputs = None
            else:
                entry.g = g

        def on_forward(module: nn.Module, inputs: tuple, kwargs: dict, output: torch.Tensor):
            if any(e.layer is module for e in entries):
                raise NotImplementedError("a layer ran twice in one forward pass (weight tying)")
            rule = self.rules[id(module)]
            self._check_inputs(module, rule, inputs, kwargs)
            keep, channel_dim = None, None
            if self.sparsity is not None:
                keep = self.sparsity.channel_keep(module)
                channel_dim = None if keep is None else rule.channel_dim(module, output)
                if self.sparsity.is_pruned(module) or (keep is not None and channel_dim is None):
                    masks = {
                        id(p): m for p, m in self.sparsity.masks(self.owned_params[id(module)])
                    }
                    rule, keep = MaskedRule(masks), None
                    self._check_masked_inputs(module, inputs)
            entry = _Entry(
                layer=module,
                rule=rule,
                keep=keep,
                channel_dim=channel_dim,
                inputs=[t.detach() for t in inputs if torch.is_tensor(t)],
                output=output.detach()
                if rule.needs_output(module, output, n, self.strategy)
                else None,
                state=LayerState(n=n, keep=self.keep),
            )
            entries.append(entry)
            output.register_hook(functools.partial(on_grad, entry))

        handles = [m.register_forward_hook(on_forward, with_kwargs=True) for m in self.layers]
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
            if not entry.reached:
                continue  # the loss does not depend on this layer
            g = None if entry.g is None else _at_least_fp32(entry.g)
            dtype = g.dtype if g is not None else next(entry.layer.parameters()).dtype
            with _exact_arithmetic(coef):
                sums = entry.rule.clipped_sum(
                    entry.layer, entry.inputs, g, coef.to(dtype), entry.state
                )
            layer = entry.layer
            self.reached.add(id(layer))
            missing = self.owned[id(layer)] - {id(p) for p in sums}
            if missing:
                names = [n for n, p in layer.named_parameters(recurse=False) if id(p) in missing]
                raise ClipRuleError(
                    f"the clipping rule of {self.names[id(layer)]} ({type(layer).__qualname__}) "
                    f"returned no clipped sum for its parameter(s) {', '.join(names)}, which "
                    "would get noise only; the rule must cover every trainable parameter"
                )
            del entry, g
            for p, value in sums.items():
                value = value.to(p.dtype).view_as(p)
                if getattr(p, "summed_grad", None) is None:
                    p.summed_grad = value
                else:
                    p.summed_grad += value
            del sums, layer
        return float(per_view.detach().mean())
