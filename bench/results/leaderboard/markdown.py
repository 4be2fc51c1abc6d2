"""Markdown building blocks of the leaderboard: tables, code spans, cells, every number format."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tabulate import tabulate

from bench.results.stats import PAIRED, WELCH, Comparison, MeanCI

#: What an empty cell shows.
NA = "—"
_MAX_CELL_CHARS = 300


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table; cells are shown as given (no number parsing)."""
    return tabulate(rows, headers, tablefmt="github", disable_numparse=True)


def cell_text(text: object) -> str:
    """Text made safe for one Markdown table cell: one line, no bare pipes, bounded length."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    if len(text) > _MAX_CELL_CHARS:
        text = text[: _MAX_CELL_CHARS - 1] + "…"
    return text


def code(text: object) -> str:
    """A spec string (or any name) as inline code in a table cell."""
    return f"`{cell_text(text)}`"


def distinct(values: Iterable[object]) -> list[str]:
    """Distinct non-empty values as sorted strings."""
    return sorted({str(v) for v in values if v is not None and v != ""})


def join(values: Sequence[str], empty: str = "not recorded") -> str:
    """Values separated by commas, or ``empty`` when there are none."""
    return ", ".join(values) if values else empty


def number_text(value: float) -> str:
    """A privacy parameter or a level as written in a paper: 8, 0.5, 1e-05."""
    return f"{value:g}"


def optional_text(value: float | None, spec: str) -> str:
    """A measurement in ``spec``'s format, or the empty cell."""
    return NA if value is None else format(value, spec)


def pp_text(fraction: float) -> str:
    """A fraction (of accuracy) in percentage points with two decimals: ``0.0543`` -> ``5.43``."""
    return f"{100 * fraction:.2f}"


def pvalue_text(p: float) -> str:
    """A p-value as a table cell: four decimals, ``<0.0001`` below that."""
    return "<0.0001" if p < 0.0001 else f"{p:.4f}"


def p_with_test_text(p: float | None, test: str | None) -> str:
    """A corrected p-value with the test that gave it."""
    if p is None:
        return NA
    short = {PAIRED: "paired", WELCH: "Welch"}.get(test or "", test)
    return f"{pvalue_text(p)} ({short})"


def accuracy_text(acc: MeanCI, *, say_no_ci: bool = True) -> str:
    """Mean accuracy ± its interval half-width in percent, with n; ``say_no_ci`` marks a cell
    without an interval as such."""
    if acc.half_width is None:
        return f"{pp_text(acc.mean)} (n={acc.n}{', no CI' if say_no_ci else ''})"
    return f"{pp_text(acc.mean)} ± {pp_text(acc.half_width)} (n={acc.n})"


def detectable_text(difference: float | None) -> str:
    """A detectable difference (a fraction) as a table cell in percentage points.

    Above 100 pp no change of accuracy could reach it: the cell says ``> 100`` rather than a
    number such as 2195 that reads as if it meant something.
    """
    if difference is None:
        return NA
    return "> 100" if difference > 1.0 else pp_text(difference)


def difference_text(comparison: Comparison | None) -> str:
    """A comparison's difference with its 95% interval, in percentage points, as a table cell:
    ``+4.61 [+4.00, +5.23]``; ``(no CI, n<2)`` without an interval; ``—`` without a difference."""
    if comparison is None or comparison.diff is None:
        return NA
    if comparison.half_width is None:
        return f"{100 * comparison.diff:+.2f} (no CI, n<2)"
    return interval_text(comparison.diff, comparison.half_width)


def interval_text(estimate: float, half_width: float) -> str:
    """A signed estimate (a fraction) with its interval, in percentage points:
    ``+4.61 [+4.00, +5.23]``."""
    value, half = 100 * estimate, 100 * half_width
    return f"{value:+.2f} [{value - half:+.2f}, {value + half:+.2f}]"


def epsilon_text(spent: float | None, exceeded_target: float | None) -> str:
    """Epsilon spent, flagged when a run spent more than its target (the budget did not hold)."""
    if exceeded_target is None:
        return optional_text(spent, ".2f")
    return f"{spent:.2f} (over target {number_text(exceeded_target)}!)"
