"""Which rule clips each trainable layer, and the check that every parameter is clipped once."""

from __future__ import annotations

from torch import nn

from bkclip.errors import CoverageError
from bkclip.rule import ClipRule, clip_rule
from bkclip.rules.fallback import FALLBACK


def resolve_rule(layer: nn.Module) -> ClipRule:
    """The layer's registered rule, or the fallback for a class opted into it.

    Raises:
        ClipRuleError: For a class with neither (names the class).
    """
    rule = clip_rule(layer)
    return FALLBACK if rule is None else rule


def rule_for(layer: nn.Module) -> str:
    """The rule a layer takes: ``bk`` (a registered rule) or ``fallback`` (a class opted into
    the materialising fallback); raises `ClipRuleError` for any other."""
    return "fallback" if resolve_rule(layer) is FALLBACK else "bk"


def trainable_parameters(module: nn.Module, recurse: bool = False) -> list[nn.Parameter]:
    """The trainable parameters ``module`` owns (with ``recurse``: or any module below it)."""
    return [p for p in module.parameters(recurse=recurse) if p.requires_grad]


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that own trainable parameters directly, in registration order."""
    return [m for m in model.modules() if trainable_parameters(m)]


def check_coverage(model: nn.Module) -> None:
    """Refuse a model whose trainable parameters the clipper would not clip exactly once.

    Every trainable parameter must be owned by exactly one layer, and that layer's rule (or
    its fallback) computes it alone: a parameter shared by two layers would have its norms
    added in quadrature but its sums added linearly (up to sqrt(2) C); a layer with parameters
    of its own *and* children with parameters would have the children's gradients counted by
    both (the fallback differentiates everything below the layer).

    Raises:
        CoverageError: Naming the parameter or layer and why.
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
            raise CoverageError(
                f"parameter {names[0]} is shared with {', '.join(names[1:])}; the book-keeping "
                "clipper needs each trainable parameter owned by exactly one layer (a shared "
                "one would be clipped as two); untie it or use grad_sample_mode hooks"
            )
    for name, module in model.named_modules():
        if not trainable_parameters(module):
            continue
        nested = [
            f"{name}.{child}" if name else child
            for child, sub in module.named_children()
            if trainable_parameters(sub, recurse=True)
        ]
        if nested:
            raise CoverageError(
                f"layer {name or type(model).__name__} ({type(module).__qualname__}) has "
                f"trainable parameters of its own and children with trainable parameters "
                f"({', '.join(nested)}), whose gradients its rule would count again; move its "
                "own parameters into a child module"
            )
