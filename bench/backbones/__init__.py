"""CIFAR ResNets built from timm layers, registered here and in timm's model registry."""

# Registration order is the order `list_backbones()` reports.
from bench.backbones import resnet9, wrn  # noqa: I001
from bench.backbones import resnet18, knresnet
from bench.backbones.registry import (
    DEFAULT_NORM,
    BackboneSpec,
    ResolvedBackbone,
    create_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
    resolve_backbone,
)

__all__ = [
    "DEFAULT_NORM",
    "BackboneSpec",
    "ResolvedBackbone",
    "create_backbone",
    "get_backbone",
    "knresnet",
    "list_backbones",
    "register_backbone",
    "resnet9",
    "resnet18",
    "resolve_backbone",
    "wrn",
]
