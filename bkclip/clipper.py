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

Each layer class has its own rule, looked up by exact class in the registry of `bkclip.rule`
(`bkclip.rules` holds those of torch's and timm's layers; a norm registers the rules of its own
layers in its own file). A class opted into the fallback takes Opacus' per-layer grad sampler
(or its functorch path), materialised one layer at a time; any other trainable layer without a
rule is an error. Every rule is checked against the one-example oracle in ``tests/test_bk.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from torch import nn

from bkclip.coverage import check_coverage, resolve_rule, trainable_layers, trainable_parameters
from bkclip.errors import ClipRuleError, LayerCallError
from bkclip.masks import CoordinateMasks
from bkclip.maths import at_least_fp32, exact_arithmetic
from bkclip.rule import KEEP, STRATEGIES, ClipRule, LayerState
from bkclip.rules.fallback import FALLBACK
from bkclip.rules.masked import MaskedRule


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
    rule = resolve_rule(layer)
    n = grad_output.shape[0]
    g = at_least_fp32(grad_output.detach())
    with exact_arithmetic(g):
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
        sparsity: Pre-pruned weights and each step's dropped channels, left out of the norms
            and the sums; None (or inactive masks) clips every coordinate.

    Raises:
        ClipRuleError: A trainable layer's class has no rule and no fallback.
        CoverageError: The model's parameters would not each be clipped exactly once
            (`check_coverage`).
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: str = "auto",
        keep: str = "auto",
        sparsity: CoordinateMasks | None = None,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if keep not in KEEP:
            raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
        self.model, self.strategy, self.keep = model, strategy, keep
        self.sparsity = sparsity if sparsity is not None and sparsity.active else None
        check_coverage(model)
        self.layers = trainable_layers(model)
        self.rules = {id(m): resolve_rule(m) for m in self.layers}
        names = {id(m): name for name, m in model.named_modules()}
        self.names = {id(m): names[id(m)] or type(m).__name__ for m in self.layers}
        self.owned_params = {id(m): trainable_parameters(m) for m in self.layers}
        self.owned = {key: {id(p) for p in ps} for key, ps in self.owned_params.items()}
        self.reached: set[int] = set()
        self.last_norms: torch.Tensor | None = None

    @property
    def fallback_classes(self) -> list[str]:
        """Names of the layer classes that take the materialising fallback."""
        return sorted({type(m).__name__ for m in self.layers if self.rules[id(m)] is FALLBACK})

    @property
    def unreached_layers(self) -> list[str]:
        """Names of the trainable layers no backward pass has reached so far: their parameters
        got noise only (the loss never depended on them, e.g. a layer outside the forward)."""
        return [self.names[id(m)] for m in self.layers if id(m) not in self.reached]

    def _describe(self, layer: nn.Module) -> str:
        return f"{self.names[id(layer)]} ({type(layer).__qualname__})"

    def _check_inputs(self, module: nn.Module, rule: ClipRule, args: tuple, kwargs: dict) -> None:
        if any(torch.is_tensor(v) for v in kwargs.values()):
            raise LayerCallError(
                f"layer {self._describe(module)} was called with "
                "tensor keyword arguments, which the book-keeping clipper does not see; pass "
                "them positionally"
            )
        tensors = sum(torch.is_tensor(t) for t in args)
        if rule is FALLBACK and tensors > 1 and type(module) not in GradSampleModule.GRAD_SAMPLERS:
            raise LayerCallError(
                f"layer {self._describe(module)} takes {tensors} "
                "tensor inputs, but Opacus' functorch fallback differentiates it with respect "
                "to its first input only; register a clipping rule (or an Opacus grad sampler) "
                "for the class"
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
        on_forward = functools.partial(self._on_forward, entries, parts, n)
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
        self._add_clipped_sums(entries, coef)
        return float(per_view.detach().mean())

    def _masking(
        self, module: nn.Module, rule: ClipRule, inputs: tuple, output: torch.Tensor
    ) -> tuple[ClipRule, torch.Tensor | None, int | None]:
        """The rule for this call, and the kept channels and their dimension in the output
        gradient when dropped channels are masked there (None, None otherwise)."""
        keep = self.sparsity.channel_keep(module)
        channel_dim = None if keep is None else rule.channel_dim(module, output)
        if self.sparsity.is_pruned(module) or (keep is not None and channel_dim is None):
            masks = {id(p): m for p, m in self.sparsity.masks(self.owned_params[id(module)])}
            MaskedRule.check_inputs(module, self.names[id(module)], inputs)
            return MaskedRule(masks), None, None
        return rule, keep, channel_dim

    def _on_forward(
        self,
        entries: list[_Entry],
        parts: list[torch.Tensor],
        n: int,
        module: nn.Module,
        inputs: tuple,
        kwargs: dict,
        output: torch.Tensor,
    ) -> None:
        """Forward hook: record what the layer's norm and sum will read, hook its output."""
        if any(e.layer is module for e in entries):
            raise NotImplementedError("a layer ran twice in one forward pass (weight tying)")
        rule = self.rules[id(module)]
        self._check_inputs(module, rule, inputs, kwargs)
        keep, channel_dim = None, None
        if self.sparsity is not None:
            rule, keep, channel_dim = self._masking(module, rule, inputs, output)
        entry = _Entry(
            layer=module,
            rule=rule,
            keep=keep,
            channel_dim=channel_dim,
            inputs=[t.detach() for t in inputs if torch.is_tensor(t)],
            output=output.detach() if rule.needs_output(module, output, n, self.strategy) else None,
            state=LayerState(n=n, keep=self.keep),
        )
        entries.append(entry)
        output.register_hook(functools.partial(self._on_grad, parts, entry))

    def _on_grad(self, parts: list[torch.Tensor], entry: _Entry, g: torch.Tensor) -> None:
        """Runs inside the backward pass, as soon as this layer's output gradient exists."""
        g = g.detach()
        if entry.keep is not None:  # dropped channels: out of this layer's norm and sum
            dim = entry.channel_dim
            if g.shape[dim] != entry.keep.numel():
                raise ClipRuleError(
                    f"layer {self._describe(entry.layer)}:"
                    f" its rule's channel_dim {dim} has {g.shape[dim]} entries in the output "
                    f"gradient, its parameters {entry.keep.numel()} output channels; the "
                    "rule must return None from channel_dim for such a layer"
                )
            shape = [1] * g.dim()
            shape[dim] = -1
            g = g * entry.keep.to(g.dtype).view(shape)
        with exact_arithmetic(g):
            parts.append(
                entry.rule.norm_sq(
                    entry.layer,
                    entry.inputs,
                    at_least_fp32(g),
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

    def _add_clipped_sums(self, entries: list[_Entry], coef: torch.Tensor) -> None:
        """Add each reached layer's clipped sum to its parameters' ``summed_grad``, dropping
        each layer's kept tensors as soon as its sum is taken."""
        while entries:
            entry = entries.pop()
            if not entry.reached:
                continue  # the loss does not depend on this layer
            g = None if entry.g is None else at_least_fp32(entry.g)
            dtype = g.dtype if g is not None else next(entry.layer.parameters()).dtype
            with exact_arithmetic(coef):
                sums = entry.rule.clipped_sum(
                    entry.layer, entry.inputs, g, coef.to(dtype), entry.state
                )
            layer = entry.layer
            self.reached.add(id(layer))
            missing = self.owned[id(layer)] - {id(p) for p in sums}
            if missing:
                names = [n for n, p in layer.named_parameters(recurse=False) if id(p) in missing]
                raise ClipRuleError(
                    f"the clipping rule of {self._describe(layer)} "
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
