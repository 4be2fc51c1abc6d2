"""Spec strings (``name[key=value,...]``): grammar, parameters, resolved specs, names; no torch."""

from specs.grammar import SpecError, coerce_value, format_spec, format_value, parse_spec
from specs.names import closest
from specs.params import keyword_defaults, resolve_params, summary
from specs.plugins import load_entry_points
from specs.resolved import ResolvedSpec

__all__ = [
    "ResolvedSpec",
    "SpecError",
    "closest",
    "coerce_value",
    "format_spec",
    "format_value",
    "keyword_defaults",
    "load_entry_points",
    "parse_spec",
    "resolve_params",
    "summary",
]
