"""A factory's spec parameters and one-line description, and given values resolved against them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from specs.grammar import SpecError, coerce_value


def keyword_defaults(
    factory: Callable[..., Any], skip: tuple[str, ...] = (), error: type[Exception] = SpecError
) -> dict[str, Any]:
    """The spec parameters of ``factory``: its keyword-only parameters with their defaults.

    Args:
        factory: A registered norm factory or backbone builder.
        skip: Keyword parameters the caller passes, never a spec (``device``, ``num_classes``).
        error: The exception class raised.

    Raises:
        error: A spec parameter without a default.
    """
    defaults = {}
    for pname, p in inspect.signature(factory).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or pname in skip:
            continue
        if p.default is inspect.Parameter.empty:
            raise error(f"{factory.__name__}: parameter {pname!r} needs a default")
        defaults[pname] = p.default
    return defaults


def summary(factory: Callable[..., Any]) -> str:
    """The first line of ``factory``'s docstring: its description in ``bench list``."""
    doc = inspect.getdoc(factory) or ""
    return doc.splitlines()[0] if doc else ""


def resolve_params(
    what: str,
    name: str,
    defaults: Mapping[str, Any],
    params: Mapping[str, Any],
    choices: Mapping[str, tuple[Any, ...]] | None = None,
    always_shown: tuple[str, ...] = (),
    error: type[Exception] = SpecError,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check spec parameters against a factory's keyword defaults: the one rule norms and
    backbones share.

    Returns:
        ``(full, explicit)``: every parameter with its value, and those that differ from the
        default (or are always shown), which the canonical spec string prints.

    Raises:
        error: An unknown parameter, a value of the wrong type, or one outside its choices.
    """
    choices = choices or {}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise error(f"{what} {name!r} takes no parameter {unknown[0]!r}; its parameters: {allowed}")
    full = dict(defaults)
    for key, value in params.items():
        full[key] = coerce_value(name, key, value, defaults[key], what=what, error=error)
        if key in choices and full[key] not in choices[key]:
            raise error(
                f"{what} {name!r}: {key}={full[key]!r} is not allowed; "
                f"allowed: {', '.join(map(str, choices[key]))}"
            )
    explicit = {k: v for k, v in full.items() if v != defaults[k] or k in always_shown}
    return full, explicit
