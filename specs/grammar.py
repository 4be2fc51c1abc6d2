"""Spec strings such as ``group_norm[num_groups=8]``: parse, format, and coerce their values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_SPEC_RE = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(?:\[(.*)\])?\s*$")


class SpecError(ValueError):
    """Raised when a spec string or one of its values is malformed and the caller named no
    error class of its own."""


def parse_spec(
    spec: str, what: str = "norm", error: type[Exception] = SpecError
) -> tuple[str, dict[str, str]]:
    """Split ``"group_norm[num_groups=8]"`` into ``("group_norm", {"num_groups": "8"})``.

    Values stay strings here; :func:`coerce_value` converts them to the parameter's type.

    Args:
        spec: The spec string.
        what: The kind of spec, for messages (``norm``, ``backbone``).
        error: The exception class raised.

    Raises:
        error: When ``spec`` is not a string or not of the form ``name[key=value,...]``.
    """
    if not isinstance(spec, str):
        raise error(f"a {what} spec must be a string such as 'name[key=value]', got {spec!r}")
    match = _SPEC_RE.match(spec)
    if not match:
        raise error(f"malformed {what} spec {spec!r}; expected name or name[key=value,...]")
    name, body = match.group(1), match.group(2)
    params: dict[str, str] = {}
    if body is not None and body.strip():
        for item in body.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise error(f"malformed parameter {item.strip()!r} in {what} spec {spec!r}")
            if key in params:
                raise error(f"parameter {key!r} given twice in {what} spec {spec!r}")
            params[key] = value.strip()
    return name, params


def format_spec(name: str, params: Mapping[str, Any]) -> str:
    """The canonical spec string: parameters sorted by key, ``name`` alone when there are none."""
    if not params:
        return name
    body = ",".join(f"{k}={format_value(params[k])}" for k in sorted(params))
    return f"{name}[{body}]"


def format_value(value: Any) -> str:
    """A parameter value as a spec string writes it (``true``, ``8``, ``None``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def coerce_value(
    name: str,
    key: str,
    value: Any,
    default: Any,
    *,
    what: str = "norm",
    error: type[Exception] = SpecError,
) -> Any:
    """Convert a spec value (often a string from YAML or the CLI) to the type of ``default``.

    Args:
        name: The spec's name, for messages.
        key: The parameter, for messages.
        value: The value given.
        default: The parameter's default, whose type the value takes; None: an optional number.
        what: The kind of spec, for messages.
        error: The exception class raised.

    Raises:
        error: When the value cannot be read as the default's type.
    """
    if not isinstance(value, str) or isinstance(default, str):
        if isinstance(default, bool) and not isinstance(value, bool):
            raise error(f"{what} {name!r}: {key} must be true or false, got {value!r}")
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:  # optional number, e.g. group_size
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    except ValueError:
        kind = (
            "true or false"
            if isinstance(default, bool)
            else "a number or none"
            if default is None
            else type(default).__name__
        )
        raise error(f"{what} {name!r}: {key} must be {kind}, got {value!r}") from None
    return text
