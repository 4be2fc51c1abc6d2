"""The GPU report's parts, by name, in report order: `PARTS`.

Each part is one module with ``TITLE``, ``measure(run)`` and ``render(data)``: ``measure`` fills
``run.data`` with JSON values, calling ``run.measured()`` after each measurement (which saves
what it has, so that a killed part keeps it) and checking ``run.expired()`` before the next;
``render`` turns that data into Markdown lines. `bench.perf.parts.base` holds what they share:
`Sizes` (`FULL` for a GPU, `TINY` for the CPU and CI) and `PartRun`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.perf.parts import bf16, max_batch, pipeline, recipe, table, tests
from bench.perf.parts.base import PartRun

Measure = Callable[[PartRun], None]
Render = Callable[[dict[str, Any]], list[str]]

#: name -> (title, measure, render), in report order; a part's name is its module's.
PARTS: dict[str, tuple[str, Measure, Render]] = {
    m.__name__.rsplit(".", 1)[1]: (m.TITLE, m.measure, m.render)
    for m in (tests, table, max_batch, pipeline, bf16, recipe)
}
