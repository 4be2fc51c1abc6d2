"""The leaderboard's figures: accuracy with intervals, and accuracy against DP throughput."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: File names of the figures, relative to the run directory (the leaderboard links them).
ACCURACY_PNG = "accuracy.png"
ACCURACY_VS_THROUGHPUT_PNG = "accuracy_vs_throughput.png"
FIGURE_FILES = (ACCURACY_PNG, ACCURACY_VS_THROUGHPUT_PNG)

_DPI = 120
# Without this matplotlib writes its version into the PNG, so a library upgrade alone would
# change the bytes of an otherwise identical figure.
_METADATA = {"Software": None}


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


def write_figures(run_dir: Path, points: Sequence[FigurePoint]) -> list[Path]:
    """Draw ``accuracy.png`` and ``accuracy_vs_throughput.png`` into ``run_dir``.

    Uses the object-oriented Figure API with the Agg canvas: headless, and unlike
    ``matplotlib.use("Agg")`` it leaves the caller's global backend (e.g. a notebook's) alone.

    Args:
        run_dir: Directory of the records file; the PNGs are written beside it.
        points: One point per (backbone, norm) with at least one ok run.

    Returns:
        The paths written, in ``FIGURE_FILES`` order; empty (nothing written) without points.
    """
    if not points:
        return []
    # Imported here: matplotlib is slow to import and only the report needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    backbones = sorted({p.backbone for p in points})

    fig = Figure(figsize=(6.0, 1.2 + 0.45 * len(points)), layout="constrained")
    FigureCanvasAgg(fig)
    heights = [sum(p.backbone == b for p in points) for b in backbones]
    axes = fig.subplots(len(backbones), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, backbone in zip(axes, backbones, strict=True):
        cell = sorted((p for p in points if p.backbone == backbone), key=lambda p: -p.acc_pct)
        ys = list(range(len(cell)))[::-1]
        errors = [p.acc_half_width_pct or 0.0 for p in cell]
        ax.errorbar([p.acc_pct for p in cell], ys, xerr=errors, fmt="o", capsize=3, color="C0")
        # One seed gives no interval: an open marker says so instead of a zero-width bar.
        for p, y in zip(cell, ys, strict=True):
            if p.acc_half_width_pct is None:
                ax.plot(p.acc_pct, y, "o", mfc="white", color="C0")
        ax.set_yticks(ys, [p.norm for p in cell])
        ax.set_title(backbone, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("test accuracy (%), mean and 95% CI over seeds; open marker: one seed")
    accuracy_path = run_dir / ACCURACY_PNG
    fig.savefig(accuracy_path, dpi=_DPI, metadata=_METADATA)

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
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
            label=backbone,
        )
        for p in cell:
            ax.annotate(
                p.norm,
                (p.throughput_img_s, p.acc_pct),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no throughput recorded", ha="center", transform=ax.transAxes)
    ax.set_xlabel("DP training throughput (images/s, mean over seeds)")
    ax.set_ylabel("test accuracy (%, mean over seeds)")
    ax.grid(alpha=0.3)
    throughput_path = run_dir / ACCURACY_VS_THROUGHPUT_PNG
    fig.savefig(throughput_path, dpi=_DPI, metadata=_METADATA)
    return [accuracy_path, throughput_path]
