"""The norms registry: every normalisation layer the benchmark compares, registered by name."""

# Registration order is the order `list_norms()` reports: the reference point first.
from norms import identity  # noqa: I001
from norms import group_norm, layer_norm, scale_norm
from norms import dp_batch_norm, kernel_norm
from norms.errors import NormError, NormSpecError, UnknownNormError
from norms.registry import (
    NormSpec,
    ResolvedNorm,
    create_norm,
    get_norm,
    list_norms,
    load_plugins,
    register_norm,
    resolve_norm,
)

__all__ = [
    "NormError",
    "NormSpec",
    "NormSpecError",
    "ResolvedNorm",
    "UnknownNormError",
    "create_norm",
    "dp_batch_norm",
    "get_norm",
    "group_norm",
    "identity",
    "kernel_norm",
    "layer_norm",
    "list_norms",
    "load_plugins",
    "register_norm",
    "resolve_norm",
    "scale_norm",
]
