"""An accuracy axis fitted to the data: its range, intervals cut at its edges, the chance line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.text import Text

# An interval end may reach this many times the spread of the means (at least _MIN_SPAN_PCT)
# beyond the outermost mean before it is cut: a 2-seed t-interval of +-75 pp would otherwise
# set the scale and flatten every difference between the means.
_REACH = 1.0
_MIN_SPAN_PCT = 10.0
# The chance line stretches the axis to reach it by at most this share of the data's range;
# further away, the axis label says where chance lies instead.
_CHANCE_STRETCH = 0.5
# Margin around the drawn range, as a share of it; at most 1 pp beyond 0 % or 100 %.
_MARGIN = 0.04
_CHANCE_STYLE = {"linestyle": "--", "color": "0.35", "linewidth": 1.0, "zorder": 1}
#: Text of the note an axis label gets when some interval was cut at the axis.
CUT_NOTE = "arrowhead: interval cut at the axis edge"


@dataclass(frozen=True)
class AccuracyAxis:
    """The range an accuracy axis shows.

    Attributes:
        low: Interval ends below this are cut here (percent).
        high: Interval ends above this are cut here (percent).
        limits: The axis limits: ``low`` and ``high`` with a small margin.
        chance_pct: The chance accuracy when the axis shows it, else None.
        chance_off_axis: The chance accuracy when it lies beyond the axis, else None.
    """

    low: float
    high: float
    limits: tuple[float, float]
    chance_pct: float | None
    chance_off_axis: float | None

    def cut(self, mean: float, half: float | None) -> tuple[float, float, bool, bool]:
        """An interval's drawn ends, and whether its low or high end was cut at the axis."""
        half = half or 0.0
        lo, hi = mean - half, mean + half
        return max(lo, self.low), min(hi, self.high), lo < self.low, hi > self.high


def fit_accuracy_axis(
    means: Sequence[float], halves: Sequence[float | None], chance_pct: float | None
) -> AccuracyAxis:
    """The accuracy range that shows every mean and the intervals near them.

    Interval ends are kept within [0, 100] % and within a reach of the means equal to their
    spread (at least 10 pp); the chance line is brought in when it lies near that range.

    Args:
        means: Mean accuracies (percent), at least one.
        halves: Their intervals' half-widths (percent; None without interval).
        chance_pct: Accuracy of guessing (percent), or None.

    Returns:
        The fitted axis.
    """
    lowest, highest = min(means), max(means)
    reach = _REACH * max(highest - lowest, _MIN_SPAN_PCT)
    ends = [(m - (h or 0.0), m + (h or 0.0)) for m, h in zip(means, halves, strict=True)]
    low = max(min(e[0] for e in ends), lowest - reach, 0.0)
    high = min(max(e[1] for e in ends), highest + reach, 100.0)
    shown, off = None, None
    if chance_pct is not None:
        stretch = _CHANCE_STRETCH * max(high - low, _MIN_SPAN_PCT)
        if low - stretch <= chance_pct <= high + stretch:
            shown = chance_pct
            low, high = min(low, chance_pct), max(high, chance_pct)
        else:
            off = chance_pct
    margin = _MARGIN * max(high - low, _MIN_SPAN_PCT / 2)
    limits = (max(low - margin, -1.0), min(high + margin, 101.0))
    return AccuracyAxis(low, high, limits, shown, off)


def draw_intervals(
    ax: Axes,
    positions: Sequence[float],
    means: Sequence[float],
    halves: Sequence[float | None],
    axis: AccuracyAxis,
    *,
    vertical: bool,
    **style: object,
) -> bool:
    """Means with intervals cut at the axis; an arrowhead marks each cut end, and an open
    marker each mean without an interval (one seed: no zero-width bar).

    Args:
        ax: The axes.
        positions: Where each mean sits along the other axis.
        means: Mean accuracies (percent).
        halves: Half-widths of their intervals (percent; None without interval).
        axis: The fitted accuracy axis.
        vertical: Accuracy runs along y (else along x).
        style: Passed to ``errorbar`` (``fmt``, ``color``, ``label``...).

    Returns:
        Whether any interval was cut.
    """
    cuts = [axis.cut(m, h) for m, h in zip(means, halves, strict=True)]
    errors = [
        [m - c[0] for m, c in zip(means, cuts, strict=True)],
        [c[1] - m for m, c in zip(means, cuts, strict=True)],
    ]
    if vertical:
        ax.errorbar(positions, means, yerr=errors, capsize=3, **style)
    else:
        ax.errorbar(means, positions, xerr=errors, capsize=3, **style)
    color = style.get("color")
    for position, (lo, hi, cut_lo, cut_hi) in zip(positions, cuts, strict=True):
        for end, cut, marker in ((lo, cut_lo, "v<"), (hi, cut_hi, "^>")):
            if cut:
                xy = (position, end) if vertical else (end, position)
                ax.plot(*xy, marker=marker[0 if vertical else 1], color=color, ms=6, zorder=3)
    # Above errorbar's own filled marker (zorder 2.1), which would otherwise hide it.
    for position, mean, half in zip(positions, means, halves, strict=True):
        if half is None:
            xy = (position, mean) if vertical else (mean, position)
            ax.plot(*xy, "o", mfc="white", color=color, zorder=3)
    return any(c[2] or c[3] for c in cuts)


def draw_chance(ax: Axes, axis: AccuracyAxis, *, vertical: bool) -> Text | None:
    """A dashed line at chance accuracy, labelled ``chance``, when the axis shows it.

    Args:
        ax: The axes.
        axis: The fitted accuracy axis.
        vertical: Accuracy runs along y (the line is horizontal), else along x.

    Returns:
        The line's text, or None when chance lies beyond the axis.
    """
    chance = axis.chance_pct
    if chance is None:
        return None
    font = {"fontsize": 7, "color": _CHANCE_STYLE["color"]}
    if vertical:
        ax.axhline(chance, label="chance", **_CHANCE_STYLE)
        place = ax.get_yaxis_transform()  # x in axes fraction, y in data
        return ax.text(0.995, chance, "chance", transform=place, ha="right", va="bottom", **font)
    ax.axvline(chance, label="chance", **_CHANCE_STYLE)
    place = ax.get_xaxis_transform()  # x in data, y in axes fraction
    # At the top, beside the best norm (listed first), which is the furthest from chance.
    return ax.text(chance, 0.97, " chance", transform=place, rotation=90, va="top", **font)


def accuracy_label(
    base: str,
    axis: AccuracyAxis,
    cut: bool,
    classes: int | None,
    notes: Sequence[str] = (),
) -> str:
    """An accuracy axis label that says where chance is and whether intervals were cut.

    Args:
        base: The label's first line.
        axis: The fitted accuracy axis.
        cut: Some interval was cut at the axis edge.
        classes: Number of classes, to say what chance is.
        notes: Further notes for the second line, first.
    """
    notes = list(notes)
    if axis.chance_pct is not None and classes:
        notes.append(f"dashed: chance, 1/{classes}")
    if axis.chance_off_axis is not None:
        notes.append(f"chance ({axis.chance_off_axis:.3g} %) is off the axis")
    if cut:
        notes.append(CUT_NOTE)
    return base + ("\n(" + "; ".join(notes) + ")" if notes else "")
