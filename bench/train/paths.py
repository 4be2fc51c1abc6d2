"""Which per-sample-gradient path clipped each trainable layer of a run."""

from __future__ import annotations

from opacus import GradSampleModule
from torch import nn

from bkclip import rule_for


def grad_sampler(mode: str) -> str:
    """What computed the clipped per-example gradients: ``bk`` (`bkclip`'s book-keeping
    clipper) or ``opacus`` (Opacus' GradSampleModule, ``hooks`` or ``functorch``)."""
    return "bk" if mode == "bk" else "opacus"


def grad_sample_paths(model: nn.Module, mode: str) -> dict[str, str]:
    """Which per-sample-gradient path each trainable layer type takes.

    ``opacus``: a sampler shipped by Opacus; ``custom``: registered by this project;
    ``functorch``: Opacus' generic vmap path (no exact-type sampler, or forced); under
    ``bk``: ``bk`` (a book-keeping rule of `bkclip`) or ``bk-fallback`` (that layer's
    per-example gradients materialised through Opacus).
    """
    paths: dict[str, str] = {}
    for module in model.modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        sampler = GradSampleModule.GRAD_SAMPLERS.get(type(module))
        if mode == "bk":
            path = "bk" if rule_for(module) == "bk" else "bk-fallback"
        elif mode == "functorch" or sampler is None:
            path = "functorch"
        else:
            path = "opacus" if sampler.__module__.startswith("opacus.") else "custom"
        paths[type(module).__name__] = path
    return dict(sorted(paths.items()))
