"""The leaderboard's figures: accuracy with intervals, against DP throughput, against epsilon."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import atomic
from bench.results.figure_axes import (
    CUT_NOTE,
    AccuracyAxis,
    accuracy_label,
    draw_chance,
    draw_intervals,
    fit_accuracy_axis,
)
from bench.results.figure_context import FigureContext
from bench.results.figure_labels import abbreviations, place_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

#: File names of the figures, relative to the run directory (the leaderboard links them).
ACCURACY_PNG = "accuracy.png"
ACCURACY_VS_THROUGHPUT_PNG = "accuracy_vs_throughput.png"
FIGURE_FILES = (ACCURACY_PNG, ACCURACY_VS_THROUGHPUT_PNG)
#: Written only when the grid sweeps ``privacy.epsilon``; linked from its own section.
PRIVACY_UTILITY_PNG = "privacy_utility.png"
#: What a figure's name ends with when it draws TAN simulations (never beside DP runs).
SIMULATED_SUFFIX = "_tan"

_DPI = 120
# Without this matplotlib writes its version into the PNG, so a library upgrade alone would
# change the bytes of an otherwise identical figure.
_METADATA = {"Software": None}
# Titles and axis labels are wrapped at this many characters, so a long backbone name or label
# grows the figure downwards instead of running off its sides.
_WRAP_CHARS = 60
# Margin (inches) constrained layout keeps between the outermost text and the image's edge.
_PAD_IN = 0.08


@dataclass(frozen=True)
class FigurePoint:
    """One (backbone, norm) cell as drawn.

    Attributes:
        backbone: Backbone spec string.
        norm: Norm spec string.
        acc_pct: Mean test accuracy in percent.
        acc_half_width_pct: Half-width of its 95% interval in percent; None with one seed.
        throughput_img_s: Mean DP training throughput in images/s; None when not recorded.
    """

    backbone: str
    norm: str
    acc_pct: float
    acc_half_width_pct: float | None
    throughput_img_s: float | None


@dataclass(frozen=True)
class CurvePoint:
    """One (panel, norm, epsilon) cell of the privacy-utility figure.

    Attributes:
        panel: The panel: a backbone, with any other swept keys that were held fixed.
        norm: Norm spec string.
        epsilon: Target epsilon of the runs.
        acc_pct: Mean test accuracy in percent.
        acc_half_width_pct: Half-width of its 95% interval in percent; None with one seed.
    """

    panel: str
    norm: str
    epsilon: float
    acc_pct: float
    acc_half_width_pct: float | None


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A Figure on the Agg canvas with constrained layout.

    The object-oriented API with the Agg canvas is headless, and unlike ``matplotlib.use("Agg")``
    it leaves the caller's global backend (e.g. a notebook's) alone.
    """
    # Imported here: matplotlib is slow to import and only the report needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Drawn at the saving resolution, so that what is measured on screen (label boxes) is
    # what the PNG shows.
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    fig.get_layout_engine().set(w_pad=_PAD_IN, h_pad=_PAD_IN)
    FigureCanvasAgg(fig)
    return fig


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, _WRAP_CHARS, break_on_hyphens=False)) or text


def _outside(fig: Figure) -> tuple[float, float]:
    """How far (inches) the drawn artists reach beyond the left plus right, and the bottom plus
    top edges, after laying the figure out: its tight bounding box holds every drawn text (tick
    labels, axis labels, titles, annotations, legends) and axes."""
    fig.draw_without_rendering()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    width, height = fig.get_size_inches()
    return (
        max(0.0, -box.x0) + max(0.0, box.x1 - width),
        max(0.0, -box.y0) + max(0.0, box.y1 - height),
    )


def overflow_in(fig: Figure) -> float:
    """How far (inches) the figure's drawn artists reach beyond its edges; 0 when all fit."""
    return float(sum(_outside(fig)))


def _fit(fig: Figure, tries: int = 6) -> None:
    """Grow the figure until nothing reaches beyond its edges.

    Constrained layout places the axes so that their decorations fit, but it cannot shrink text:
    a tick label or axis label wider than the room the figure has runs off the image. Each try
    widens (or heightens) the figure by what stuck out, and lays it out again.
    """
    for _ in range(tries):
        extra_w, extra_h = _outside(fig)
        if extra_w <= 0 and extra_h <= 0:
            return
        # The margin on top of the overflow lets constrained layout keep its padding.
        width, height = fig.get_size_inches()
        fig.set_size_inches(
            width + (extra_w + 2 * _PAD_IN if extra_w > 0 else 0.0),
            height + (extra_h + 2 * _PAD_IN if extra_h > 0 else 0.0),
        )


def _title(fig: Figure, context: FigureContext) -> None:
    """The figure's title: suite, backbone, budget and privacy target (`FigureContext.title`)."""
    # About as many characters as fit across the figure at this size.
    chars = max(_WRAP_CHARS, int(fig.get_size_inches()[0] * 12))
    lines: list[str] = []
    for part in context.title_parts():
        if lines and len(lines[-1]) + 1 + len(part) <= chars:
            lines[-1] += " " + part
        else:
            lines += textwrap.wrap(part, chars, break_on_hyphens=False) or [part]
    fig.suptitle("\n".join(lines), fontsize=10)


def accuracy_figure(points: Sequence[FigurePoint], context: FigureContext) -> Figure:
    """Accuracy with its 95% interval per norm, one panel per backbone, best norm on top.

    Args:
        points: One point per (backbone, norm).
        context: The runs' setting, for the title and the chance line.
    """
    backbones = sorted({p.backbone for p in points})
    longest = max(len(p.norm) for p in points)
    # Room for the longest norm name beside a plot area of about 3.5 inches.
    fig = _new_figure(max(6.0, 4.0 + 0.085 * longest), 1.8 + 0.45 * len(points))
    heights = [sum(p.backbone == b for p in points) for b in backbones]
    # One accuracy axis for every panel, so that a sweep's settings read against each other.
    axes = fig.subplots(len(backbones), 1, squeeze=False, height_ratios=heights, sharex=True)[:, 0]
    axis = fit_accuracy_axis(
        [p.acc_pct for p in points], [p.acc_half_width_pct for p in points], context.chance_pct
    )
    cut = False
    for ax, backbone in zip(axes, backbones, strict=True):
        cell = sorted((p for p in points if p.backbone == backbone), key=lambda p: -p.acc_pct)
        ys = list(range(len(cell)))[::-1]
        draw_chance(ax, axis, vertical=False)
        # A t-interval from 2 seeds can reach below 0 % or far beyond the means: it stops at the
        # axis edge with an arrowhead, and the axis label says so.
        cut |= draw_intervals(
            ax,
            ys,
            [p.acc_pct for p in cell],
            [p.acc_half_width_pct for p in cell],
            axis,
            vertical=False,
            fmt="o",
            color="C0",
        )
        ax.set_yticks(ys, [p.norm for p in cell])
        ax.set_ylim(-0.6, len(cell) - 0.4)
        ax.set_xlim(*axis.limits)
        ax.set_title(_wrap(backbone), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(
        accuracy_label(
            "test accuracy (%): mean and 95% CI over seeds, a failed run at chance",
            axis,
            cut,
            context.num_classes,
            ["open marker: one seed"],
        )
    )
    _title(fig, context)
    _fit(fig)
    return fig


def throughput_figure(points: Sequence[FigurePoint], context: FigureContext) -> Figure:
    """Mean accuracy against mean DP throughput, one marker per backbone, norms labelled.

    Norms are labelled by short names (`figure_labels.abbreviations`) that a key beside the
    plot spells out, placed where no label overlaps another or a marker
    (`figure_labels.place_labels`).

    Args:
        points: One point per (backbone, norm).
        context: The runs' setting, for the title and the chance line.
    """
    backbones = sorted({p.backbone for p in points})
    fig = _new_figure(6.5, 4.8)
    ax = fig.subplots()
    drawn = [p for p in points if p.throughput_img_s is not None]
    for index, backbone in enumerate(backbones):
        cell = [p for p in drawn if p.backbone == backbone]
        if cell:
            ax.scatter(
                [p.throughput_img_s for p in cell],
                [p.acc_pct for p in cell],
                marker="osD^v<>"[index % 7],
                color=f"C{index % 10}",
                label=_wrap(backbone),
                zorder=2,
            )
    axis = fit_accuracy_axis(
        [p.acc_pct for p in drawn] or [0.0], [None] * max(1, len(drawn)), context.chance_pct
    )
    chance = draw_chance(ax, axis, vertical=True)
    labels = abbreviations(p.norm for p in drawn)
    if drawn:
        _throughput_limits(ax, [p.throughput_img_s for p in drawn])
        ax.set_ylim(*axis.limits)
        _legends(fig, len(backbones), labels)
    else:
        ax.text(0.5, 0.5, "no throughput recorded", ha="center", transform=ax.transAxes)
    ax.set_xlabel("DP training throughput (images/s, mean over seeds)")
    ax.set_ylabel(
        accuracy_label(
            "test accuracy (%, mean over seeds, failed at chance)", axis, False, context.num_classes
        )
    )
    ax.grid(alpha=0.3)
    _title(fig, context)
    _fit(fig)
    # The labels go in last, on the final layout, inside the axes (so the layout stays).
    place_labels(
        ax,
        [(p.throughput_img_s, p.acc_pct) for p in drawn],
        [labels[p.norm] for p in drawn],
        avoid=_chance_boxes(ax, chance),
    )
    return fig


def _chance_boxes(ax: Axes, chance: Text | None) -> list[tuple[float, float, float, float]]:
    """Display boxes of the horizontal chance line (a thin band across the axes) and its text,
    for point labels to keep clear of."""
    if chance is None:
        return []
    frame = ax.get_window_extent()
    _, y = ax.transData.transform((0.0, chance.get_position()[1]))
    return [tuple(chance.get_window_extent().extents), (frame.x0, y - 1.5, frame.x1, y + 1.5)]


def _legends(fig: Figure, backbones: int, labels: Mapping[str, str]) -> None:
    """The backbones' markers below the plot and the labels' key beside it; the figure grows by
    what they take, so that the plot keeps its size."""
    # Below the plot, not on it, where it could hide points and their names.
    legend = fig.legend(loc="outside lower center", fontsize=8, ncols=min(2, backbones))
    height = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi
    width, fig_height = fig.get_size_inches()
    # One or two rows fit the figure's first size; each further row adds its height.
    fig.set_size_inches(width, fig_height + max(0.0, height - 0.45))
    _key(fig, labels)


def _throughput_limits(ax: Axes, throughputs: Sequence[float]) -> None:
    """Throughput limits with room on both sides for a label beside the outermost points."""
    low, high = min(throughputs), max(throughputs)
    margin = 0.08 * max(high - low, 0.1 * high)
    ax.set_xlim(max(0.0, low - margin), high + margin)


def _key(fig: Figure, labels: Mapping[str, str]) -> None:
    """A legend right of the plot spelling out each short label that is not the spec itself;
    the figure widens by the key's width, so the plot keeps its size."""
    # Imported here: matplotlib is slow to import and only the report needs it.
    from matplotlib.lines import Line2D

    spelled = [(short, spec) for spec, short in sorted(labels.items()) if short != spec]
    if not spelled:
        return
    key = fig.legend(
        [Line2D([], [], linestyle="none")] * len(spelled),
        [f"{short}: {spec}" for short, spec in spelled],
        # Centred on the right, clear of the title above and the legend below.
        loc="outside center right",
        fontsize=7,
        handlelength=0,
        handletextpad=0,
        title="labels",
        title_fontsize=8,
    )
    box = key.get_window_extent(fig.canvas.get_renderer())
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + box.width / fig.dpi, max(height, box.height / fig.dpi + 2.5))


def privacy_utility_figure(points: Sequence[CurvePoint], context: FigureContext) -> Figure:
    """Accuracy against epsilon (log scale) per norm with 95% intervals, one panel per backbone.

    Norms are nudged apart along the x axis by a few percent of a decade so that their
    intervals do not hide one another; an open marker is a point with one seed (no interval).
    Every panel shares one fitted accuracy axis.

    Args:
        points: One point per (panel, norm, epsilon).
        context: The runs' setting, for the title and the chance line.
    """
    panels = sorted({p.panel for p in points})
    norms = sorted({p.norm for p in points})
    epsilons = sorted({p.epsilon for p in points})
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig = _new_figure(1.0 + 4.2 * columns, 2.0 + 3.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    axis = fit_accuracy_axis(
        [p.acc_pct for p in points], [p.acc_half_width_pct for p in points], context.chance_pct
    )
    cut = False
    for ax, panel in zip(axes, panels, strict=False):
        draw_chance(ax, axis, vertical=True)
        for index, norm in enumerate(norms):
            cell = sorted(
                (p for p in points if p.panel == panel and p.norm == norm),
                key=lambda p: p.epsilon,
            )
            if cell:
                cut |= _curve(ax, cell, index, len(norms), axis)
        ax.set_xscale("log")
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.minorticks_off()
        ax.set_ylim(*axis.limits)
        ax.set_title(_wrap(panel), fontsize=9)
        ax.set_xlabel("target ε (log scale)")
        ax.set_ylabel(accuracy_label("test accuracy (%)", axis, False, None))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    _curve_legend(fig, axes[: len(panels)], cut)
    _title(fig, context)
    _fit(fig)
    return fig


def _curve(
    ax: Axes, cell: Sequence[CurvePoint], index: int, count: int, axis: AccuracyAxis
) -> bool:
    """One norm's accuracy against epsilon, nudged sideways by its ``index`` of ``count``;
    returns whether an interval was cut at the axis."""
    nudge = 10 ** (0.012 * (index - (count - 1) / 2))
    xs = [p.epsilon * nudge for p in cell]
    color = f"C{index % 10}"
    return draw_intervals(
        ax,
        xs,
        [p.acc_pct for p in cell],
        [p.acc_half_width_pct for p in cell],
        axis,
        vertical=True,
        fmt="-o",
        color=color,
        label=cell[0].norm,
    )


def _curve_legend(fig: Figure, axes: Sequence[Axes], cut: bool) -> None:
    """One legend below the panels: each norm, and the chance line, once."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="outside lower center",
        fontsize=8,
        ncols=min(3, len(handles)),
        title="mean and 95% CI over ok seeds; open marker: one seed"
        + ("\n" + CUT_NOTE if cut else ""),
        title_fontsize=8,
    )


def _save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically (a reader never sees half an image)."""
    atomic.write_with(path, lambda f: fig.savefig(f, format="png", dpi=_DPI, metadata=_METADATA))


def figure_name(name: str, simulated: bool = False) -> str:
    """A figure's file name: ``name``, or for TAN simulations ``name`` with `SIMULATED_SUFFIX`
    before its extension (``accuracy_tan.png``)."""
    if not simulated:
        return name
    stem, dot, extension = name.rpartition(".")
    return f"{stem}{SIMULATED_SUFFIX}{dot}{extension}"


def write_figures(
    run_dir: Path,
    points: Sequence[FigurePoint],
    *,
    context: FigureContext,
    simulated: bool = False,
) -> list[Path]:
    """Draw ``accuracy.png`` and ``accuracy_vs_throughput.png`` into ``run_dir``.

    Args:
        run_dir: Directory of the records file; the PNGs are written beside it.
        points: One point per (backbone, norm) with at least one ok run.
        context: The runs' setting (`figure_context.figure_context`): title and chance line.
        simulated: The points are TAN simulations: the files are named by `figure_name`.

    Returns:
        The paths written, in ``FIGURE_FILES`` order; empty (nothing written) without points.
    """
    if not points:
        return []
    run_dir = Path(run_dir)
    paths = []
    for name, draw in (
        (ACCURACY_PNG, accuracy_figure),
        (ACCURACY_VS_THROUGHPUT_PNG, throughput_figure),
    ):
        path = run_dir / figure_name(name, simulated)
        _save(draw(points, context), path)
        paths.append(path)
    return paths


def write_privacy_utility(
    run_dir: Path,
    points: Sequence[CurvePoint],
    *,
    context: FigureContext,
    simulated: bool = False,
) -> Path | None:
    """Draw ``privacy_utility.png`` into ``run_dir``.

    Args:
        run_dir: Directory of the records file.
        points: One point per (panel, norm, epsilon) with at least one ok run.
        context: The runs' setting (`figure_context.figure_context`): title and chance line.
        simulated: The points are TAN simulations: the file is named by `figure_name`.

    Returns:
        The path written, or None (nothing written) without points.
    """
    if not points:
        return None
    path = Path(run_dir) / figure_name(PRIVACY_UTILITY_PNG, simulated)
    _save(privacy_utility_figure(points, context), path)
    return path
