"""Coercion: raw YAML values checked against the config dataclasses' annotations."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from bench.config import SECTIONS
from bench.suite.reading import Context


def reject_unknown(raw: Mapping[str, Any], valid: Sequence[str], prefix: str, ctx: Context):
    for key in raw:
        if key not in valid:
            path = f"{prefix}{key}"
            raise ctx.error(
                path,
                "unknown key",
                given=key,
                allowed=", ".join(valid),
                choices=[str(v) for v in valid],
            )


def parse_section(section: str, raw: Any, ctx: Context):
    cls = SECTIONS[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.error(section, "must be a mapping", given=raw, allowed="key: value pairs")
    names = [f.name for f in dataclasses.fields(cls)]
    reject_unknown(raw, names, f"{section}.", ctx)
    hints = field_hints(cls)
    values = {k: coerce(v, hints[k], f"{section}.{k}", ctx) for k, v in raw.items()}
    config = cls(**values)
    for name, message, allowed in config.problems():
        raise ctx.error(f"{section}.{name}", message, given=getattr(config, name), allowed=allowed)
    return config


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config dataclass's fields (cached: they never change)."""
    return typing.get_type_hints(cls)


def coerce(value: Any, hint: Any, key: str, ctx: Context) -> Any:
    """Check ``value`` against a field's annotation; convert ints and numeric strings to float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(value, inner, key, ctx)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ctx.error(key, "is not allowed", given=value, allowed=", ".join(args), choices=args)
    if origin is tuple:
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
            want = f"a list of {len(args)} numbers" if fixed else "a list of numbers"
            raise ctx.error(key, f"must be {want}", given=value, allowed=want)
        item_hints = args if fixed else [args[0]] * len(value)
        return tuple(
            coerce(v, h, f"{key}[{i}]", ctx)
            for i, (v, h) in enumerate(zip(value, item_hints, strict=True))
        )
    if dataclasses.is_dataclass(hint):
        return _coerce_nested(value, hint, key, ctx)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ctx.error(key, "must be true or false", given=value, allowed="true, false")
    if hint is int:
        # bool is an int subclass in Python; `true` for a count is a typo, not a 1.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ctx.error(key, "must be an integer", given=value, allowed="an integer")
    if hint is float:
        number = _as_float(value)
        if number is None:
            raise ctx.error(key, "must be a finite number", given=value, allowed="a number")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ctx.error(key, "must be a string", given=value, allowed="text")
    raise TypeError(f"bench.suite cannot check fields annotated {hint!r}")  # a bug, not input


def _coerce_nested(value: Any, cls: type, key: str, ctx: Context) -> Any:
    """A mapping for a nested config (``training.pre_prune: {rate: 0.5}``), checked key by key
    and by the nested config's own ``problems``."""
    fields = [f for f in dataclasses.fields(cls)]
    names = [f.name for f in fields]
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if not isinstance(value, dict):
        form = "{" + ", ".join(f"{n}: ..." for n in names) + "}"
        raise ctx.error(key, "must be a mapping, or null", given=value, allowed=form)
    reject_unknown(value, names, f"{key}.", ctx)
    for name in required:
        if name not in value:
            raise ctx.error(f"{key}.{name}", "is required", allowed=", ".join(names))
    hints = field_hints(cls)
    config = cls(**{k: coerce(v, hints[k], f"{key}.{k}", ctx) for k, v in value.items()})
    for name, message, allowed in config.problems():
        raise ctx.error(f"{key}.{name}", message, given=getattr(config, name), allowed=allowed)
    return config


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads `1e-5` (no dot) as a string; accept it as a number.
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def is_tuple_hint(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(is_tuple_hint(a) for a in typing.get_args(hint))
    return typing.get_origin(hint) is tuple
