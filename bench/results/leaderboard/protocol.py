"""The suite's declared analysis protocol as the report reads it: the primary grid point, the
collapse threshold and the ROPE, and which table's family is primary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bench.config import primary_allowed, primary_mismatch, primary_pairs, same_grid_value
from bench.errors import ConfigError
from bench.results.leaderboard.collect import Cell
from bench.results.leaderboard.settings import suite_section
from bench.results.record import Record, grid_value_text
from bench.results.stats.evidence import DEFAULT_ROPE
from bench.results.stats.itt import DEFAULT_COLLAPSE

#: Grid keys that every suite sweeps: they name the table's rows and replicates, not a setting.
FIXED_KEYS = ("backbone", "norm", "seed")
PRIMARY = "primary"
EXPLORATORY = "exploratory"
#: A grid key whose non-null values simulate a run without privacy (TAN): its default primary
#: value is the private run's, null, whatever the grid lists last.
SIMULATION_KEY = "privacy.simulate_batch_size"


@dataclass(frozen=True)
class Protocol:
    """What the suite's ``report`` section declares about the analysis.

    Attributes:
        primary: The primary grid point: swept key -> value text; empty when nothing is swept.
        declared: Whether ``report.primary`` named it (else the default, the last values).
        collapse: Distance from chance (a fraction) within which an ok run counts as collapsed.
        rope: Half-width of the region of practical equivalence (a fraction).
    """

    primary: Mapping[str, str]
    declared: bool = False
    collapse: float = DEFAULT_COLLAPSE
    rope: float = DEFAULT_ROPE

    def point_text(self) -> str:
        """The primary grid point as ``key=value`` pairs, or a phrase when nothing is swept."""
        if not self.primary:
            return "the one grid point"
        return ", ".join(f"{k}={v}" for k, v in sorted(self.primary.items()))

    def family_of(self, norms: Mapping[str, Cell]) -> str:
        """``PRIMARY`` when a table's runs are at the primary grid point, else ``EXPLORATORY``."""
        record = next(
            (r for c in norms.values() for r in (*c.ok.values(), *c.failed_records)), None
        )
        if record is not None and record.get("dp_valid") is False:
            return EXPLORATORY  # a TAN simulation gives no privacy: no claim rests on it
        overrides = record.get("overrides") if record is not None else None
        overrides = overrides if isinstance(overrides, Mapping) else {}
        if set(overrides) != set(self.primary):
            return EXPLORATORY
        same = all(
            same_grid_value(grid_value_text(overrides[k]), v) for k, v in self.primary.items()
        )
        return PRIMARY if same else EXPLORATORY


def _number(report: Mapping, key: str, default_pp: float, low: float, high: float) -> float:
    """A percentage-point setting of ``report`` as a fraction, checked."""
    value = report.get(key)
    if value is None:
        return default_pp / 100
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise ConfigError(
            "invalid report setting",
            key=f"report.{key}",
            given=value,
            allowed=f"percentage points in [{low:g}, {high:g})",
        )
    return float(value) / 100


def _swept(suite: Mapping, records: Iterable[Record]) -> dict[str, list[str]]:
    """Each swept key's values as text, in the grid's order (else the records' sorted order)."""
    grid = suite_section(suite, "grid")
    swept = {
        k: [grid_value_text(v) for v in values]
        for k, values in grid.items()
        if k not in FIXED_KEYS and isinstance(values, list) and values
    }
    if swept or grid:
        return swept
    found: dict[str, set[str]] = {}
    for record in records:
        overrides = record.get("overrides")
        for k, v in overrides.items() if isinstance(overrides, Mapping) else ():
            found.setdefault(k, set()).add(grid_value_text(v))
    return {k: sorted(v, key=_text_order) for k, v in sorted(found.items())}


def _text_order(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _default(key: str, values: list[str]) -> str:
    """The default primary value of a swept key: the last listed (the final budget or target),
    except that a TAN simulation key defaults to its private run (``none``) when listed."""
    if key == SIMULATION_KEY and "none" in values:
        return "none"
    return values[-1]


def resolve_protocol(suite: Mapping, records: Iterable[Record]) -> Protocol:
    """The protocol of ``suite.json``'s ``report`` section, with the defaults it leaves out.

    Raises:
        ConfigError: When ``report.primary`` names a key the grid does not sweep or a value it
            does not list, or a threshold is out of range.
    """
    report = suite_section(suite, "report")
    collapse = _number(report, "collapse_pp", 100 * DEFAULT_COLLAPSE, 0, 50)
    rope = _number(report, "rope_pp", 100 * DEFAULT_ROPE, 1e-9, 100)
    swept = _swept(suite, records)
    given = report.get("primary")
    if given is None:
        return Protocol({k: _default(k, v) for k, v in swept.items()}, False, collapse, rope)
    if primary_mismatch(str(given), swept):
        raise ConfigError(
            "the primary grid point must give one listed value of every swept key",
            key="report.primary",
            given=given,
            allowed=primary_allowed(swept),
        )
    return Protocol(dict(primary_pairs(str(given))), True, collapse, rope)
