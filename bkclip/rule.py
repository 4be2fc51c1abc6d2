"""The per-layer rule protocol and the registry of rules by exact layer class.

The clipper computes each example's gradient norm and the clipped sum of gradients layer by
layer, from the layer's inputs and its output gradient, without ever materialising the whole
model's per-example gradients. How to do that depends on the layer, so every layer class with
trainable parameters owns a *rule*, registered here by exact class in the way Opacus registers
grad samplers (``@register_clip_rule(MyLayer)`` on a `ClipRule` subclass).

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
from torch import nn

from bkclip.errors import ClipRuleError

#: Ways a layer's per-example norms may be computed (``auto`` picks the cheaper per layer).
STRATEGIES = ("auto", "ghost", "materialise")
#: What a materialised layer keeps for its clipped sum (``auto``: the smaller).
KEEP = ("auto", "per_example", "inputs")


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
    (float32 or wider), ``output`` its forward output when `needs_output` asked for it. A rule
    overrides these methods with the same signatures (annotated here, not repeated there).
    """

    def check(self, layer: nn.Module) -> str | None:
        """Why this rule cannot handle ``layer``'s configuration, or None when it can."""
        return None

    def channel_dim(self, layer: nn.Module, g: torch.Tensor) -> int | None:
        """The dimension of the output gradient ``g`` whose index i touches only slice i of
        the first dimension of every parameter of the layer (a conv's or a linear layer's
        output channel), or None when there is none.

        Gradient dropping drops output channels by zeroing them in ``g`` along this dimension
        before `norm_sq` and `clipped_sum`; for None the clipper materialises the layer's
        per-example gradients and masks them instead (correct for any layer, slower).
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
