"""Numeric order of table names and grid values: ``steps=40`` before ``steps=120``, ε 0.5 < 8."""

from __future__ import annotations

import re
from collections.abc import Iterable

# A number as grid values and spec strings write it: 40, 0.5, 1e-05, 2.0 (no sign: a hyphen in
# a name is not a minus).
_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numeric_key(text: object) -> tuple:
    """Sort key that compares the numbers inside a text as numbers and the rest as text.

    ``resnet9 [training.steps=40]`` sorts before ``resnet9 [training.steps=120]``, ``0.5``
    before ``8``; a number sorts before text at the same place (``8`` before ``none``). Texts
    equal as numbers (``8`` and ``8.0``) fall back to the text, so the order is total.
    """
    text = "" if text is None else str(text)
    parts: list[tuple] = []
    position = 0
    for match in _NUMBER.finditer(text):
        if match.start() > position:
            parts.append((1, 0.0, text[position : match.start()]))
        parts.append((0, float(match.group()), ""))
        position = match.end()
    if position < len(text):
        parts.append((1, 0.0, text[position:]))
    return (tuple(parts), text)


def numeric_sorted(texts: Iterable[object]) -> list:
    """The values sorted by :func:`numeric_key`."""
    return sorted(texts, key=numeric_key)
