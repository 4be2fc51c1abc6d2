"""The backbones registry: each CIFAR ResNet is registered here and in timm's model registry."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from timm.layers import get_act_layer
from timm.models import register_model
from torch import nn

from bench.backbones.layers import ModelArgs
from bench.config import DEFAULT_NORM
from bench.errors import BackboneError
from norms import ResolvedNorm, resolve_norm
from specs import ResolvedSpec, closest, keyword_defaults, parse_spec, resolve_params, summary

#: Passed by the caller, never set by a spec.
_COMMON = ("num_classes", "in_chans")
#: Spec parameters every backbone takes (``width``, ``act_layer``), with their defaults.
_SHARED = {f.name: f.default for f in fields(ModelArgs) if f.name not in ("plan", *_COMMON)}


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: Stable identifier used in YAML, records and reports.
        timm_name: The name in timm's registry (differs only where timm already uses the name).
        builder: ``builder(norm, *, num_classes, in_chans, **params) -> nn.Module``; it takes
            the shared parameters of `ModelArgs` through ``**`` and declares only its own.
        defaults: The spec parameters with their defaults: the shared ones, then the builder's.
        description: One line for ``bench list``.
    """

    name: str
    timm_name: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    description: str


@dataclass(frozen=True)
class ResolvedBackbone(ResolvedSpec[BackboneSpec]):
    """A backbone with its parameters fixed; ``str()`` is the canonical spec string."""

    def build(
        self, norm: str | ResolvedNorm = DEFAULT_NORM, *, num_classes: int = 10, in_chans: int = 3
    ) -> nn.Module:
        """Build the model with ``norm``."""
        resolved = resolve_norm(norm)
        model = self.spec.builder(
            resolved, num_classes=num_classes, in_chans=in_chans, **self.params
        )
        model.backbone_spec = str(self)
        model.norm_spec = str(resolved)
        return model


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(
    name: str, *, timm_name: str | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder`` under ``name`` here and as a timm model entrypoint.

    ``timm.create_model(timm_name, norm="group_norm", num_classes=10, width=0.5)`` then builds
    the same model as `create_backbone`.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise BackboneError(f"backbone {name!r} is already registered")
        own = keyword_defaults(builder, _COMMON, BackboneError)
        spec = BackboneSpec(
            name=name,
            timm_name=timm_name or name,
            builder=builder,
            defaults={**_SHARED, **own},
            description=summary(builder),
        )
        _REGISTRY[name] = spec
        register_model(_timm_entrypoint(spec))
        return builder

    return decorator


def _timm_entrypoint(spec: BackboneSpec) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        if pretrained:
            raise BackboneError(
                f"{spec.name}: no pretrained weights exist; models train from scratch under DP"
            )
        norm = kwargs.pop("norm", kwargs.pop("norm_layer", DEFAULT_NORM))
        common = {k: kwargs.pop(k) for k in _COMMON if k in kwargs}
        return _resolve(spec, kwargs).build(norm, **common)

    entrypoint.__name__ = entrypoint.__qualname__ = spec.timm_name
    entrypoint.__module__ = spec.builder.__module__
    entrypoint.__doc__ = spec.description
    return entrypoint


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under ``name``; unknown names list the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = closest(name, _REGISTRY)
        msg = f"unknown backbone {name!r}; registered backbones: {', '.join(sorted(_REGISTRY))}"
        raise BackboneError(msg + (f" (did you mean {hint!r}?)" if hint else "")) from None


def resolve_backbone(spec: str) -> ResolvedBackbone:
    """Resolve ``"wrn16_4[width=0.5]"`` to a `ResolvedBackbone` (errors are `BackboneError`)."""
    name, params = parse_spec(spec, "backbone", BackboneError)
    return _resolve(get_backbone(name), params)


def _resolve(spec: BackboneSpec, params: Mapping[str, Any]) -> ResolvedBackbone:
    full, explicit = resolve_params(
        "backbone", spec.name, spec.defaults, params, error=BackboneError
    )
    for key, (accepts, allowed) in _RULES.items():
        if key in params and not accepts(full[key]):
            raise BackboneError(
                f"backbone {spec.name!r}: {key}={full[key]!r} is not allowed; allowed: {allowed}"
            )
    return ResolvedBackbone(spec=spec, params=full, explicit=explicit)


def _known_activation(name: Any) -> bool:
    try:
        return get_act_layer(name) is not None
    except (KeyError, ValueError, TypeError):
        return False


#: The values each shared spec parameter accepts, with what the error says is allowed; the
#: types are already checked against the defaults. Without these, ``width=0`` built a model of
#: the smallest width (16 channels) that its record called width 0.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "width": (lambda w: math.isfinite(w) and w > 0, "a finite number > 0"),
    "act_layer": (_known_activation, "a timm activation name such as relu, gelu, silu"),
}


def create_backbone(
    name: str,
    *,
    norm: str | ResolvedNorm = DEFAULT_NORM,
    num_classes: int = 10,
    in_chans: int = 3,
    **params: Any,
) -> nn.Module:
    """Build backbone ``name`` (a name or spec string) with ``norm``; the project's entry point.

    Raises:
        BackboneError: Unknown backbone or parameter.
        norms.NormError: Unknown norm or norm parameter.
    """
    resolved = resolve_backbone(name)
    if params:
        resolved = _resolve(resolved.spec, {**resolved.explicit, **params})
    return resolved.build(norm, num_classes=num_classes, in_chans=in_chans)
