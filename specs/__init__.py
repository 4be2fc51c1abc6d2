"""Spec strings (``name[key=value,...]``): grammar, resolved specs, name suggestions; no torch."""

from specs.grammar import SpecError, coerce_value, format_spec, format_value, parse_spec
from specs.names import closest
from specs.resolved import ResolvedSpec

__all__ = [
    "ResolvedSpec",
    "SpecError",
    "closest",
    "coerce_value",
    "format_spec",
    "format_value",
    "parse_spec",
]
