"""Matching a suite's ``report.primary`` grid point against the values its grid sweeps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.config.sections import primary_pairs


def same_grid_value(shown: str, given: str) -> bool:
    """Whether a grid value's text and a declared value's text name one value (``8`` = ``8.0``)."""
    if shown == given:
        return True
    try:
        return math.isclose(float(shown), float(given))
    except ValueError:
        return False


def primary_mismatch(text: str, swept: Mapping[str, Sequence[str]]) -> bool:
    """Whether ``report.primary`` fails to give one listed value of every swept key and only
    those; ``swept`` maps each swept key to its values as text."""
    pairs = dict(primary_pairs(text))
    if set(pairs) != set(swept):
        return True
    return any(not any(same_grid_value(s, v) for s in swept[k]) for k, v in pairs.items())


def primary_allowed(swept: Mapping[str, Sequence[str]]) -> str:
    """The grid points ``report.primary`` may name, for an error message."""
    points = ", ".join(f"{k}={'|'.join(v)}" for k, v in sorted(swept.items()))
    return points or "null (the grid sweeps no key beyond backbone, norm and seed)"
