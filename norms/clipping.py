"""Book-keeping clipping rules: the per-layer protocol, a registry by layer class, shared maths.

The book-keeping clipper (`bench.bk`) computes each example's gradient norm and the clipped sum
of gradients layer by layer, from the layer's inputs and its output gradient, without ever
materialising the whole model's per-example gradients. How to do that depends on the layer, so
every layer class with trainable parameters owns a *rule*, registered here by exact class in the
way Opacus registers grad samplers (``@register_clip_rule(MyLayer)`` on a `ClipRule` subclass).

This module sits below every norm file in the import graph and imports nothing of the project's
(no ``bench``, no norm), so a norm, in this repository or in another package, registers the rule
of its own layer class next to the class. `bench.bk` registers the rules for torch and timm
layers (Conv2d, Linear, weight-standardised conv, GroupNorm, LayerNorm).

A layer class without a rule is an error, never a silent fallback: the materialising fallback
(Opacus' exact-type grad sampler, else its functorch path) is chosen per class with
`register_clip_fallback`.

Shapes: ``n`` examples with ``k`` views each arrive as ``n * k`` rows (views of one example
adjacent); an example's gradient is the sum of its views' gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from norms.errors import NormError

#: Ways a layer's per-example norms may be computed (``auto`` picks the cheaper per layer).
STRATEGIES = ("auto", "ghost", "materialise")
#: What a materialised layer keeps for its clipped sum (``auto``: the smaller).
KEEP = ("auto", "per_example", "inputs")


class ClipRuleError(NormError):
    """Raised when a trainable layer has no book-keeping rule (or its rule refuses the layer's
    configuration) and no fallback was registered for its class; names the class."""


@dataclass
class LayerState:
    """One layer's scratch state between its norm (in the backward pass) and its clipped sum.

    Attributes:
        n: Examples in the physical batch.
        keep: The clipper's ``keep`` setting (see `KEEP`).
        per_example: Per-example weight gradients ``(n, O, D)`` where they were materialised
            and are worth keeping for the sum; None otherwise.
        bias_per_view: Per-view bias gradients ``(n * k, O)``, for layers with a bias.
        per_view: Per-view gradients of every parameter, for layers that keep them all.
    """

    n: int
    keep: str = "auto"
    per_example: torch.Tensor | None = None
    bias_per_view: torch.Tensor | None = None
    per_view: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)


class ClipRule:
    """How the book-keeping clipper handles one layer class.

    ``inputs`` are the layer's tensor inputs from the forward pass, ``g`` its output gradient
    (float32 or wider), ``output`` its forward output when `needs_output` asked for it.
    """

    def check(self, layer: nn.Module) -> str | None:
        """Why this rule cannot handle ``layer``'s configuration, or None when it can."""
        return None

    def channel_dim(self, layer: nn.Module, g: torch.Tensor) -> int | None:
        """The dimension of the output gradient ``g`` whose index i touches only slice i of
        the first dimension of every parameter of the layer (a conv's or a linear layer's
        output channel), or None when there is none.

        Gradient dropping (`bench.sparsity`) drops output channels by zeroing them in ``g``
        along this dimension before `norm_sq` and `clipped_sum`; for None it materialises the
        layer's per-example gradients and masks them instead (correct for any layer, slower).
        """
        return None

    def needs_output(self, layer: nn.Module, output: torch.Tensor, n: int, strategy: str) -> bool:
        """Whether `norm_sq` needs the layer's forward output (kept from the forward pass,
        so only asked for where nothing cheaper will do)."""
        return False

    def releases(self, state: LayerState, inputs: list[torch.Tensor], g: torch.Tensor) -> bool:
        """Whether, after `norm_sq`, the clipped sum needs neither the input nor the output
        gradient (they are then dropped at once, in the middle of the backward pass)."""
        return False

    def norm_sq(
        self,
        layer: nn.Module,
        inputs: list[torch.Tensor],
        g: torch.Tensor,
        strategy: str,
        state: LayerState,
        output: torch.Tensor | None,
    ) -> torch.Tensor:
        """Each example's squared gradient norm over this layer's parameters, shape ``(n,)``."""
        raise NotImplementedError

    def clipped_sum(
        self,
        layer: nn.Module,
        inputs: list[torch.Tensor] | None,
        g: torch.Tensor | None,
        coef: torch.Tensor,
        state: LayerState,
    ) -> dict[nn.Parameter, torch.Tensor]:
        """``sum_i c_i grad_i`` per parameter; ``coef`` is per view (c_i repeated k times).
        ``inputs`` and ``g`` are None when `releases` said they are not needed."""
        raise NotImplementedError


_RULES: dict[type, ClipRule] = {}
_FALLBACKS: set[type] = set()


def register_clip_rule(*classes: type) -> Callable[[type[ClipRule]], type[ClipRule]]:
    """Class decorator: the decorated `ClipRule` handles layers of exactly these classes.

    Raises:
        ClipRuleError: When one of the classes already has a rule (one rule per class).
    """

    def decorator(rule_cls: type[ClipRule]) -> type[ClipRule]:
        rule = rule_cls()
        for cls in classes:
            if cls in _RULES:
                raise ClipRuleError(f"{cls.__qualname__} already has a clipping rule")
            _RULES[cls] = rule
        return rule_cls

    return decorator


def register_clip_fallback(*classes: type) -> None:
    """Let layers of exactly these classes take the materialising fallback (Opacus' grad
    sampler registered for the class, else Opacus' functorch path), one layer at a time."""
    _FALLBACKS.update(classes)


def clip_rule(layer: nn.Module) -> ClipRule | None:
    """The rule registered for ``layer``'s exact class, or None; a rule that refuses the
    layer's configuration raises unless the class may take the fallback.

    Raises:
        ClipRuleError: Naming the class, and why its rule refused it.
    """
    cls = type(layer)
    rule = _RULES.get(cls)
    if rule is not None:
        reason = rule.check(layer)
        if reason is None:
            return rule
        if cls in _FALLBACKS:
            return None
        raise ClipRuleError(
            f"{cls.__qualname__}: its clipping rule cannot handle this layer ({reason}); "
            "call norms.clipping.register_clip_fallback on the class to materialise it"
        )
    if cls in _FALLBACKS:
        return None
    raise ClipRuleError(
        f"{cls.__module__}.{cls.__qualname__} has trainable parameters but no book-keeping "
        "clipping rule; register one with norms.clipping.register_clip_rule, or opt the class "
        "into the materialising fallback with norms.clipping.register_clip_fallback"
    )


def registered_rule_classes() -> list[type]:
    """Every layer class with a registered rule (for listings and tests)."""
    return list(_RULES)


# --- shared maths -----------------------------------------------------------------------------


def per_example(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N*K, ...) -> (N, K, ...)."""
    return t.reshape(n, -1, *t.shape[1:])


def positions(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N*K, C, L) -> (N, C, K*L): an example's K views as one sequence of positions."""
    nk, c, length = t.shape
    return t.view(n, nk // n, c, length).permute(0, 2, 1, 3).reshape(n, c, -1)


def use_ghost(d: int, o: int, s: int, strategy: str) -> bool:
    """Ghost norms cost S^2 (D + O) per example, materialising S D O: take the cheaper."""
    return strategy == "ghost" or (strategy == "auto" and s * (d + o) < d * o)


def sequence_norm_sq(
    a: torch.Tensor, g: torch.Tensor, strategy: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Squared norms of ``G_i = g_i a_i^T`` for a (N, D, S), g (N, O, S), and G_i if it was built.

    Ghost: ``||sum_s g_s a_s^T||^2 = sum((A A^T) * (G G^T))``, N * S^2 * (D + O) multiply-adds;
    materialised: N * S * D * O. Materialising wins where S is large and D * O small (early
    layers), so the kept G_i are the small ones.
    """
    if use_ghost(a.shape[1], g.shape[1], a.shape[2], strategy):
        return ((a.transpose(1, 2) @ a) * (g.transpose(1, 2) @ g)).sum(dim=(1, 2)), None
    grads = g @ a.transpose(1, 2)  # (N, O, D)
    return row_norm_sq(grads.flatten(1)), grads


#: Ghost norms and the affine layers' per-view gradients are computed over up to this many
#: slices of the examples, so their temporaries (unfolded windows, S x S Gram matrices,
#: normalised activations) take a fraction of the memory they would take for the whole batch;
#: temporaries under `SLICE_BYTES` are not split, since a small slice costs more in overhead
#: than it saves.
SLICES = 8
SLICE_BYTES = 4 * 2**20


def slices(temporary_bytes: int) -> int:
    """How many slices to compute a temporary of this total size in."""
    return max(1, min(SLICES, -(-temporary_bytes // SLICE_BYTES)))


def by_examples(
    n: int, temporary_bytes: int, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor
) -> torch.Tensor:
    """``fn(*slices, examples)`` over slices of whole examples (all K views of each), joined
    along the first dimension; each tensor is (N*K, ...), and ``temporary_bytes`` what ``fn``
    would allocate for the whole batch."""
    k = tensors[0].shape[0] // n
    step = -(-n // slices(temporary_bytes))
    return torch.cat(
        [
            fn(*(t[i * k : (i + step) * k] for t in tensors), min(step, n - i))
            for i in range(0, n, step)
        ]
    )


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def row_norm_sq(t: torch.Tensor) -> torch.Tensor:
    """``(t ** 2).sum(-1)`` without a temporary the size of ``t``."""
    return torch.linalg.vector_norm(t, dim=-1).square()


def row_dot(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(t * z).sum(-1)`` for t (N, O, D) and z (O, D), a slice of examples at a time so the
    product never takes the memory of all of ``t``."""
    return by_examples(t.shape[0], nbytes(t), lambda part, _m: (part * z).sum(-1), t)


def unfold(x: torch.Tensor, kernel_size, padding, stride) -> torch.Tensor:
    """The (N, C * k * k, L) windows a convolution with these settings reads."""
    return F.unfold(x, kernel_size, padding=padding, stride=stride)


def ghost_windows_norm_sq(
    n: int,
    kernel_size,
    x: torch.Tensor,
    g: torch.Tensor,
    windows: Callable[..., torch.Tensor],
    *extra: torch.Tensor,
) -> torch.Tensor:
    """Ghost squared norms of a convolution-like layer's per-example weight gradients, a slice
    of examples at a time: ``windows(x_slice, *extra_slices)`` gives its (m*K, D, L) input
    windows, g is the (N*K, O, H, W) output gradient."""

    def one(xs: torch.Tensor, gs: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        *parts, m = rest
        a = positions(windows(xs, *parts), m)  # (m, D, K*T)
        return sequence_norm_sq(a, positions(gs.flatten(2), m), "ghost")[0]

    window = kernel_size[0] * kernel_size[1]
    return by_examples(n, nbytes(x) * window, one, x, g, *extra)


def conv_per_example(
    x: torch.Tensor, g: torch.Tensor, n: int, kernel_size, stride, padding
) -> torch.Tensor:
    """Per-example weight gradients ``sum_s g_s a_s^T`` of a convolution, shape (N, O, D).

    With one view per example this is the weight gradient of a grouped convolution with the
    batch as groups (oneDNN/cuDNN's own kernel, no unfolded copy of the input); with K views
    the views' positions are unfolded and summed with one batched matmul.
    """
    nk, c = x.shape[:2]
    o = g.shape[1]
    kernel = tuple(kernel_size)
    if nk == n:
        w = torch.nn.grad.conv2d_weight(
            x.reshape(1, nk * c, *x.shape[2:]),
            (nk * o, c, *kernel),
            g.reshape(1, nk * o, *g.shape[2:]),
            stride=stride,
            padding=padding,
            groups=nk,
        )
        return w.view(n, o, -1)
    a = positions(unfold(x, kernel, padding, stride), n)
    return positions(g.flatten(2), n) @ a.transpose(1, 2)


def weighted_sum(coef: torch.Tensor, state: LayerState) -> torch.Tensor:
    """``sum_i c_i G_i`` from the kept per-example gradients (``coef`` per view)."""
    kept = state.per_example
    c = coef.view(state.n, -1)[:, 0]
    return torch.einsum("n,nod->od", c.to(kept.dtype), kept)


def bias_norm_sq(state: LayerState, g: torch.Tensor) -> torch.Tensor:
    """Squared per-example norms of a per-channel bias that sees output gradient ``g``
    ((N*K, O, ...)); keeps its per-view gradients in ``state`` for `bias_sum`."""
    dims = tuple(range(2, g.dim()))
    state.bias_per_view = g.sum(dim=dims) if dims else g
    return per_example(state.bias_per_view, state.n).sum(1).square().sum(-1)


def bias_sum(coef: torch.Tensor, state: LayerState) -> torch.Tensor:
    """The clipped sum of a bias whose per-view gradients `bias_norm_sq` kept."""
    return coef @ state.bias_per_view.to(coef.dtype)


class MaterialisableRule(ClipRule):
    """A rule that materialises some layers' per-example weight gradients: it keeps whichever
    is smaller until the clipped sum, those gradients (the sum is then a cheap weighted
    reduction) or the input and output gradient (the sum is then one weight-gradient GEMM, the
    non-private step's own cost for the layer)."""

    def releases(self, state, inputs, g):
        kept = state.per_example
        if kept is None:
            return False
        smaller = nbytes(kept) <= nbytes(g) + sum(nbytes(t) for t in inputs)
        if state.keep == "inputs" or (state.keep == "auto" and not smaller):
            state.per_example = None
            return False
        return True


class AffineRule(ClipRule):
    """Per-channel affine layers whose per-view gradients are a few numbers per channel
    (GroupNorm, LayerNorm, a frozen-statistics norm's affine): cheap to materialise, so every
    view's gradients are kept. A subclass says what the affine multiplies."""

    def channel_dim(self, layer, g):
        return 1  # a per-channel affine of an NCHW tensor; LayerNorm's rule says otherwise

    def normalised(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The tensor the layer's weight multiplies, and the dimensions its parameters are
        shared over within one view."""
        raise NotImplementedError

    def per_view(self, layer, x: torch.Tensor, g: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        xh, dims = self.normalised(layer, x.to(g.dtype))
        out = {}
        if layer.weight is not None and layer.weight.requires_grad:
            out[layer.weight] = (xh * g).sum(dim=dims) if dims else xh * g
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.sum(dim=dims) if dims else g
        return out

    def releases(self, state, inputs, g):
        return True

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        # The normalised input is recomputed a slice at a time.
        rows = -(-g.shape[0] // slices(2 * nbytes(g)))
        parts = [
            self.per_view(layer, x, gs)
            for x, gs in zip(inputs[0].split(rows), g.split(rows), strict=True)
        ]
        state.per_view = {p: torch.cat([v[p] for v in parts]) for p in parts[0]}
        return sum(
            per_example(v, state.n).sum(1).flatten(1).square().sum(1)
            for v in state.per_view.values()
        )

    def clipped_sum(self, layer, inputs, g, coef, state):
        return {p: torch.einsum("v,v...->...", coef, v) for p, v in state.per_view.items()}
