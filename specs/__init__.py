"""The spec-string grammar (``name[key=value,...]``) and name suggestions, free of torch."""

from specs.grammar import SpecError, coerce_value, format_spec, format_value, parse_spec
from specs.names import closest

__all__ = ["SpecError", "closest", "coerce_value", "format_spec", "format_value", "parse_spec"]
