"""Short names for norm specs and a placement of point labels in a scatter that never overlap."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from specs import SpecError, parse_spec

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.text import Annotation

# A parameter value up to this long is kept whole in a short name.
_VALUE_CHARS = 6
# Offsets (points) from a point to its label, tried nearest first; each ring tries eight sides.
_RADII_PT = (5.0, 10.0, 17.0, 27.0, 40.0)
# Directions as (dx, dy, horizontal alignment, vertical alignment): right and left first, where
# a short label reads most naturally, then above, below and the diagonals.
_SIDES = (
    (1, 0, "left", "center"),
    (-1, 0, "right", "center"),
    (0, 1, "center", "bottom"),
    (0, -1, "center", "top"),
    (1, 1, "left", "bottom"),
    (-1, 1, "right", "bottom"),
    (1, -1, "left", "top"),
    (-1, -1, "right", "top"),
)
# Half the side of the square kept clear around a marker (points: a default scatter marker is
# 6 points wide), and the room (pixels) kept between two labels.
_MARKER_PT = 3.5
_GAP_PX = 1.5

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels


def _short_value(value: str) -> str:
    """``10``, ``public`` stay; ``private_dp`` -> ``pd``; ``momentum`` -> ``mome.``."""
    if len(value) <= _VALUE_CHARS:
        return value
    parts = [p for p in value.split("_") if p]
    if len(parts) > 1:
        return "".join(p[0] for p in parts)
    return value[: _VALUE_CHARS - 2] + "."


def _short_name(spec: str) -> str:
    """``group_norm`` -> ``GN``, ``dp_batch_norm[refresh=10,stats=public]`` -> ``DBN(10,public)``,
    ``none`` -> ``none``; a string that is no spec is kept."""
    try:
        name, params = parse_spec(spec)
    except SpecError:
        return spec
    parts = [p for p in name.split("_") if p]
    # A number among the words is kept whole (``norm_10`` -> ``N10``, not ``N1``).
    initials = "".join(p if p.isdigit() else p[0].upper() for p in parts)
    short = initials if len(parts) > 1 else name
    if params:
        short += "(" + ",".join(_short_value(params[k]) for k in sorted(params)) + ")"
    return short


def abbreviations(specs: Iterable[str]) -> dict[str, str]:
    """A short, unique label for each spec, for a scatter with one text per point.

    Initials of the name's words in capitals, then the parameter values, shortened; two specs
    that would share a label get ``-1``, ``-2``... in sorted order. The figure's key maps each
    label back to its spec.

    Args:
        specs: Spec strings (norms), repeats allowed.

    Returns:
        Spec -> label, for every distinct spec.
    """
    distinct = sorted(set(specs))
    short = {spec: _short_name(spec) for spec in distinct}
    labels: dict[str, str] = {}
    for spec in distinct:
        same = [s for s in distinct if short[s] == short[spec]]
        labels[spec] = short[spec] if len(same) == 1 else f"{short[spec]}-{same.index(spec) + 1}"
    return labels


def _overlap(a: Box, b: Box) -> float:
    """Area shared by two boxes (0 when apart)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def _candidate(x: float, y: float, size: tuple[float, float], side: tuple, radius_px: float) -> Box:
    """The box a label of ``size`` (pixels) takes at ``radius_px`` on ``side`` of a point."""
    dx, dy, ha, va = side
    ax_, ay_ = x + dx * radius_px, y + dy * radius_px
    width, height = size
    x0 = {"left": ax_, "right": ax_ - width, "center": ax_ - width / 2}[ha]
    y0 = {"bottom": ay_, "top": ay_ - height, "center": ay_ - height / 2}[va]
    return (x0 - _GAP_PX, y0 - _GAP_PX, x0 + width + _GAP_PX, y0 + height + _GAP_PX)


def _outside_area(box: Box, frame: Box) -> float:
    """Area of ``box`` beyond the axes' frame."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    return area - _overlap(box, frame)


def _best_spot(
    x: float, y: float, size: tuple[float, float], taken: Sequence[Box], frame: Box, dpi: float
) -> tuple[tuple, float, Box]:
    """The first (side, radius) whose box stays in the frame and clear of ``taken``; else the
    one with the least overlap (text beyond the frame counts tenfold)."""
    scored = []
    for radius_pt in _RADII_PT:
        radius_px = radius_pt * dpi / 72.0
        for side in _SIDES:
            box = _candidate(x, y, size, side, radius_px)
            cost = 10 * _outside_area(box, frame) + sum(_overlap(box, t) for t in taken)
            if cost == 0:
                return side, radius_pt, box
            # The running index breaks ties in the order tried, never comparing the sides.
            scored.append((cost, len(scored), side, radius_pt, box))
    _, _, side, radius_pt, box = min(scored)
    return side, radius_pt, box


def _text_size(ax: Axes, text: str, fontsize: float, renderer: RendererBase) -> tuple[float, float]:
    """Width and height (pixels) of ``text`` as the axes would draw it."""
    probe = ax.text(0, 0, text, fontsize=fontsize)
    box = probe.get_window_extent(renderer)
    probe.remove()
    return box.width, box.height


def place_labels(
    ax: Axes,
    points: Sequence[tuple[float, float]],
    texts: Sequence[str],
    *,
    fontsize: float = 7.0,
    avoid: Sequence[Box] = (),
) -> list[Annotation]:
    """Annotate each point with its text where the text overlaps no other label or marker.

    Written here rather than taken from adjustText: that package is not a dependency, and a
    greedy pass is enough for a few dozen points and gives the same picture on every run (no
    iterative repulsion). Call it once the figure is laid out (its axes' size is final): boxes
    are measured in display pixels with the figure's renderer. Points go from the top left
    down; each takes the nearest of eight sides on growing rings whose box stays inside the
    axes and clear of every marker and every label placed before it. A label that found no room
    on the nearest ring gets a thin line to its point; when no ring has room, the spot with
    the least overlap is taken.

    Args:
        ax: The axes holding the points, with its final limits.
        points: Data coordinates of each point.
        texts: One label per point.
        fontsize: Font size of the labels (points).
        avoid: Further display boxes (x0, y0, x1, y1) to keep clear of, such as a line's text.

    Returns:
        The annotations, in the order of ``points``.
    """
    renderer = ax.figure.canvas.get_renderer()
    dpi = ax.figure.dpi
    frame = tuple(ax.get_window_extent(renderer).extents)
    display = [tuple(xy) for xy in ax.transData.transform(list(points))] if points else []
    marker = _MARKER_PT * dpi / 72.0
    taken: list[Box] = list(avoid) + [
        (x - marker, y - marker, x + marker, y + marker) for x, y in display
    ]
    placed: dict[int, Annotation] = {}
    for index in sorted(range(len(points)), key=lambda i: (-display[i][1], display[i][0], i)):
        x, y = display[index]
        size = _text_size(ax, texts[index], fontsize, renderer)
        side, radius_pt, box = _best_spot(x, y, size, taken, frame, dpi)
        taken.append(box)
        dx, dy, ha, va = side
        far = radius_pt > _RADII_PT[0]
        placed[index] = ax.annotate(
            texts[index],
            points[index],
            xytext=(dx * radius_pt, dy * radius_pt),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=fontsize,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if far else None,
        )
    return [placed[i] for i in range(len(points))]
