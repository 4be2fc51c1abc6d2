"""The leaderboard's figures: accuracy with intervals, against DP throughput, against epsilon."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
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


def accuracy_figure(points: Sequence[FigurePoint]) -> Figure:
    """Accuracy with its 95% interval per norm, one panel per backbone, best norm on top."""
    backbones = sorted({p.backbone for p in points})
    longest = max(len(p.norm) for p in points)
    # Room for the longest norm name beside a plot area of about 3.5 inches.
    fig = _new_figure(max(6.0, 4.0 + 0.085 * longest), 1.4 + 0.45 * len(points))
    heights = [sum(p.backbone == b for p in points) for b in backbones]
    # One accuracy axis for every panel, so that a sweep's settings read against each other.
    axes = fig.subplots(len(backbones), 1, squeeze=False, height_ratios=heights, sharex=True)[:, 0]
    clipped = False
    for ax, backbone in zip(axes, backbones, strict=True):
        cell = sorted((p for p in points if p.backbone == backbone), key=lambda p: -p.acc_pct)
        ys = list(range(len(cell)))[::-1]
        # A t-interval from 2 seeds can reach below 0 % or above 100 %, which no accuracy can:
        # the bars stop at the bounds, and the label says so when one was cut.
        halves = [p.acc_half_width_pct or 0.0 for p in cell]
        below = [min(h, max(p.acc_pct, 0.0)) for p, h in zip(cell, halves, strict=True)]
        above = [min(h, max(100.0 - p.acc_pct, 0.0)) for p, h in zip(cell, halves, strict=True)]
        clipped |= below != halves or above != halves
        errors = [below, above]
        ax.errorbar([p.acc_pct for p in cell], ys, xerr=errors, fmt="o", capsize=3, color="C0")
        # One seed gives no interval: an open marker says so instead of a zero-width bar. It goes
        # above errorbar's own filled marker (zorder 2.1), which would otherwise hide it.
        for p, y in zip(cell, ys, strict=True):
            if p.acc_half_width_pct is None:
                ax.plot(p.acc_pct, y, "o", mfc="white", color="C0", zorder=3)
        ax.set_yticks(ys, [p.norm for p in cell])
        ax.set_ylim(-0.6, len(cell) - 0.4)
        ax.set_title(_wrap(backbone), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel(
        "test accuracy (%): mean and 95% CI over seeds"
        + (", cut at 0-100 %" if clipped else "")
        + "\n(open marker: one seed, no interval)"
    )
    _fit(fig)
    return fig


def throughput_figure(points: Sequence[FigurePoint]) -> Figure:
    """Mean accuracy against mean DP throughput, one marker per backbone, norms annotated."""
    backbones = sorted({p.backbone for p in points})
    fig = _new_figure(6.5, 4.5)
    ax = fig.subplots()
    drawn = [p for p in points if p.throughput_img_s is not None]
    for index, backbone in enumerate(backbones):
        cell = [p for p in drawn if p.backbone == backbone]
        if not cell:
            continue
        ax.scatter(
            [p.throughput_img_s for p in cell],
            [p.acc_pct for p in cell],
            marker="osD^v<>"[index % 7],
            label=_wrap(backbone),
        )
    # Names of points in the right half of the plot go to their left, so a long name does not
    # run past the right edge (and squeeze the axes to make room).
    xs = [p.throughput_img_s for p in drawn]
    middle = (min(xs) + max(xs)) / 2 if xs else 0.0
    for p in drawn:
        right_half = p.throughput_img_s > middle
        ax.annotate(
            p.norm,
            (p.throughput_img_s, p.acc_pct),
            fontsize=7,
            xytext=(-3 if right_half else 3, 3),
            textcoords="offset points",
            ha="right" if right_half else "left",
        )
    if drawn:
        # Below the plot, not on it, where it could hide points and their names.
        fig.legend(loc="outside lower center", fontsize=8, ncols=min(3, len(backbones)))
    else:
        ax.text(0.5, 0.5, "no throughput recorded", ha="center", transform=ax.transAxes)
    ax.set_xlabel("DP training throughput (images/s, mean over seeds)")
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.grid(alpha=0.3)
    _fit(fig)
    return fig


def privacy_utility_figure(points: Sequence[CurvePoint]) -> Figure:
    """Accuracy against epsilon (log scale) per norm with 95% intervals, one panel per backbone.

    Norms are nudged apart along the x axis by a few percent of a decade so that their
    intervals do not hide one another; an open marker is a point with one seed (no interval).
    """
    panels = sorted({p.panel for p in points})
    norms = sorted({p.norm for p in points})
    epsilons = sorted({p.epsilon for p in points})
    columns = min(2, len(panels))
    rows = -(-len(panels) // columns)
    fig = _new_figure(1.0 + 4.2 * columns, 1.6 + 3.2 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for index, norm in enumerate(norms):
            cell = sorted(
                (p for p in points if p.panel == panel and p.norm == norm),
                key=lambda p: p.epsilon,
            )
            if not cell:
                continue
            nudge = 10 ** (0.012 * (index - (len(norms) - 1) / 2))
            xs = [p.epsilon * nudge for p in cell]
            ax.errorbar(
                xs,
                [p.acc_pct for p in cell],
                yerr=[p.acc_half_width_pct or 0.0 for p in cell],
                fmt="-o",
                capsize=3,
                color=f"C{index % 10}",
                label=norm,
            )
            for p, x in zip(cell, xs, strict=True):
                if p.acc_half_width_pct is None:
                    ax.plot(x, p.acc_pct, "o", mfc="white", color=f"C{index % 10}", zorder=3)
        ax.set_xscale("log")
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.minorticks_off()
        ax.set_title(_wrap(panel), fontsize=10)
        ax.set_xlabel("target ε (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles = {}
    for ax in axes[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles.keys()),
        loc="outside lower center",
        fontsize=8,
        ncols=min(3, len(handles)),
        title="mean and 95% CI over seeds; open marker: one seed",
        title_fontsize=8,
    )
    _fit(fig)
    return fig


def figure_name(name: str, simulated: bool = False) -> str:
    """A figure's file name: ``name``, or for TAN simulations ``name`` with `SIMULATED_SUFFIX`
    before its extension (``accuracy_tan.png``)."""
    if not simulated:
        return name
    stem, dot, extension = name.rpartition(".")
    return f"{stem}{SIMULATED_SUFFIX}{dot}{extension}"


def write_figures(
    run_dir: Path, points: Sequence[FigurePoint], *, simulated: bool = False
) -> list[Path]:
    """Draw ``accuracy.png`` and ``accuracy_vs_throughput.png`` into ``run_dir``.

    Args:
        run_dir: Directory of the records file; the PNGs are written beside it.
        points: One point per (backbone, norm) with at least one ok run.
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
        draw(points).savefig(path, dpi=_DPI, metadata=_METADATA)
        paths.append(path)
    return paths


def write_privacy_utility(
    run_dir: Path, points: Sequence[CurvePoint], *, simulated: bool = False
) -> Path | None:
    """Draw ``privacy_utility.png`` into ``run_dir``.

    Args:
        run_dir: Directory of the records file.
        points: One point per (panel, norm, epsilon) with at least one ok run.
        simulated: The points are TAN simulations: the file is named by `figure_name`.

    Returns:
        The path written, or None (nothing written) without points.
    """
    if not points:
        return None
    path = Path(run_dir) / figure_name(PRIVACY_UTILITY_PNG, simulated)
    privacy_utility_figure(points).savefig(path, dpi=_DPI, metadata=_METADATA)
    return path
