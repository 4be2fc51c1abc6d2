"""Figures fit for a paper: a title, a chance line, fitted axes, labels that do not overlap."""

from __future__ import annotations

import random
from itertools import combinations
from pathlib import Path

import pytest
from matplotlib.text import Annotation

from bench.results import figures
from bench.results.figure_context import FigureContext, figure_context
from bench.results.figure_labels import abbreviations
from tests.report_records import make_record

CONTEXT = FigureContext(
    suite="cifar10_cpu_eps8",
    backbones=("resnet9[width=0.125]",),
    epsilons=(8.0,),
    deltas=(1e-5,),
    steps=(120,),
    num_classes=4,
)
POINTS = [
    figures.FigurePoint("resnet9 [a]", "group_norm", 40.0, 3.0, 900.0),
    figures.FigurePoint("resnet9 [a]", "layer_norm", 30.0, 2.0, 1000.0),
    figures.FigurePoint("resnet9 [b]", "group_norm", 45.0, 4.0, 950.0),
]
CURVE = [
    figures.CurvePoint("resnet9", norm, eps, 30.0 + eps + shift, 2.0)
    for norm, shift in (("group_norm", 0.0), ("layer_norm", 3.0))
    for eps in (1.0, 2.0, 8.0)
]


def drawn(context: FigureContext = CONTEXT) -> dict:
    """Each of the three figures, drawn for ``context``."""
    return {
        "accuracy": figures.accuracy_figure(POINTS, context),
        "throughput": figures.throughput_figure(POINTS, context),
        "privacy-utility": figures.privacy_utility_figure(CURVE, context),
    }


def test_every_title_names_the_suite_backbone_budget_and_privacy_target() -> None:
    for name, fig in drawn().items():
        title = " ".join(fig.get_suptitle().split())
        assert title.startswith("cifar10_cpu_eps8 — resnet9[width=0.125]"), name
        assert "at 120 steps" in title and "(8, 1e-5)-DP" in title, name


def test_the_title_lists_a_swept_epsilon_and_says_a_tan_simulation_is_not_dp() -> None:
    swept = FigureContext("s", ("resnet9",), (1.0, 2.0, 8.0), (1e-5,), (40, 120), 10)
    assert swept.title() == "s — resnet9 at 40 or 120 steps, (ε, 1e-5)-DP, ε in 1, 2, 8"
    tan = FigureContext("s", ("resnet9",), (8.0,), (1e-5,), (60,), 10, simulated=True)
    assert "TAN simulation, not DP" in tan.title()


def test_the_context_is_read_from_the_ok_final_runs_of_the_records() -> None:
    records = [
        make_record("resnet9", "group_norm", 0, 0.5, steps=120, num_classes=10),
        # An older record without the field: its resolved config says how many classes.
        make_record(
            "resnet9", "layer_norm", 0, 0.4, steps=40, config={"data": {"num_classes": 10}}
        ),
        make_record("resnet9", "layer_norm", 1, None, "failed", steps=999, num_classes=3),
        make_record("resnet9", "none", 0, 0.4, steps=7, stage="tune", num_classes=3),
        make_record("wrn16_4", "none", 0, 0.4, steps=60, dp_valid=False, num_classes=100),
    ]
    dp = figure_context(records)
    assert (dp.suite, dp.backbones, dp.steps, dp.num_classes) == ("t", ("resnet9",), (40, 120), 10)
    assert dp.epsilons == (8.0,) and dp.deltas == (1e-5,) and dp.chance_pct == 10.0
    tan = figure_context(records, simulated=True)
    assert (tan.backbones, tan.steps, tan.num_classes, tan.simulated) == (
        ("wrn16_4",),
        (60,),
        100,
        True,
    )


def test_every_figure_draws_a_dashed_chance_line_at_one_over_the_classes() -> None:
    for name, fig in drawn().items():
        chance = [
            line
            for ax in fig.axes
            for line in ax.get_lines()
            if line.get_label() == "chance" and line.get_linestyle() == "--"
        ]
        assert chance, name
        # A horizontal line holds y, a vertical one x, at 100 / 4 classes.
        for line in chance:
            ends = set(line.get_xdata()) if name == "accuracy" else set(line.get_ydata())
            assert ends == {25.0}, name
        texts = [t.get_text().strip() for ax in fig.axes for t in ax.texts]
        assert "chance" in texts, name


def test_an_interval_far_beyond_the_means_is_cut_at_the_axis_not_stretching_it() -> None:
    # Two seeds of one norm far apart: 30 +- 70 pp, down to -40 %.
    wide = [
        figures.CurvePoint("resnet9", "dp_batch_norm", 4.0, 30.0, 70.0),
        *(figures.CurvePoint("resnet9", "group_norm", e, 40.0 + e, 2.0) for e in (1.0, 4.0)),
    ]
    fig = figures.privacy_utility_figure(wide, CONTEXT)
    low, high = fig.axes[0].get_ylim()
    # The axis spans the means (30 to 44 %) with room, never negative accuracies or -40 %.
    assert -1.0 <= low < 25.0 and 44.0 < high < 80.0
    bars = [s for c in fig.axes[0].collections for s in c.get_segments()]
    assert min(min(s[0][1], s[1][1]) for s in bars) >= low
    # The cut ends carry an arrowhead, and the legend says what it means.
    heads = [line for line in fig.axes[0].get_lines() if line.get_marker() in ("^", "v")]
    assert len(heads) == 2
    assert "interval cut at the axis edge" in fig.legends[0].get_title().get_text()
    horizontal = figures.accuracy_figure(
        [figures.FigurePoint("resnet9", "dp_batch_norm", 30.0, 70.0, 900.0), *POINTS[:2]],
        CONTEXT,
    )
    low, high = horizontal.axes[0].get_xlim()
    assert low >= -1.0 and high < 80.0


def test_chance_far_below_every_mean_is_named_in_the_label_not_stretching_the_axis() -> None:
    high = [figures.FigurePoint("resnet9", n, a, 1.0, 900.0) for n, a in (("a", 90), ("b", 95))]
    fig = figures.accuracy_figure(high, CONTEXT)
    assert fig.axes[0].get_xlim()[0] > 80.0
    assert "chance (25 %) is off the axis" in fig.axes[0].get_xlabel()


def crowded_points(count: int = 24) -> list[figures.FigurePoint]:
    """Long-named norms crowded into a small region of the throughput plot."""
    rng = random.Random(0)
    return [
        figures.FigurePoint(
            f"resnet9 [{i % 3}]",
            f"norm_{i}[momentum=0.{i},stats=private_dp]",
            40.0 + rng.uniform(-4.0, 4.0),
            1.0,
            1000.0 + rng.uniform(-80.0, 80.0),
        )
        for i in range(count)
    ]


def test_scatter_labels_overlap_no_other_label_nor_marker_and_stay_in_the_axes() -> None:
    points = crowded_points()
    fig = figures.throughput_figure(points, CONTEXT)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(labels) == len(points)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for a, b in combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    frame = ax.get_window_extent(renderer)
    markers = ax.transData.transform([(p.throughput_img_s, p.acc_pct) for p in points])
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
        assert box.y1 <= frame.y1
        assert not any(box.contains(x, y) for x, y in markers)
    assert figures.overflow_in(fig) == 0.0


def test_short_labels_are_unique_and_the_key_spells_each_out() -> None:
    specs = [
        "group_norm",
        "group_norm[num_groups=8]",
        "dp_batch_norm[stats=private_dp]",
        "dp_batch_norm[refresh=10,stats=public]",
        "none",
        # Two names with the same initials.
        "scale_norm",
        "spectral_norm",
    ]
    short = abbreviations(specs)
    assert len(set(short.values())) == len(specs)
    assert short["group_norm"] == "GN" and short["group_norm[num_groups=8]"] == "GN(8)"
    assert short["dp_batch_norm[stats=private_dp]"] == "DBN(pd)"
    assert short["none"] == "none"
    assert {short["scale_norm"], short["spectral_norm"]} == {"SN-1", "SN-2"}
    points = [
        figures.FigurePoint("r", s, 40.0 + i, 1.0, 900.0 + 10 * i) for i, s in enumerate(specs)
    ]
    fig = figures.throughput_figure(points, CONTEXT)
    key = [t.get_text() for t in fig.legends[-1].get_texts()]
    assert "DBN(pd): dp_batch_norm[stats=private_dp]" in key
    assert not any(entry.startswith("none:") for entry in key)


@pytest.mark.parametrize("simulated", [False, True], ids=["dp", "tan"])
def test_the_same_points_give_the_same_png_bytes_without_a_software_stamp(
    tmp_path: Path, simulated: bool
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = figures.write_figures(tmp_path / "a", POINTS, context=CONTEXT, simulated=simulated)
    second = figures.write_figures(tmp_path / "b", POINTS, context=CONTEXT, simulated=simulated)
    for one, other in zip(first, second, strict=True):
        assert one.read_bytes() == other.read_bytes()
        assert b"matplotlib" not in one.read_bytes().lower()


def test_a_mean_without_an_interval_is_an_open_marker_in_both_accuracy_figures() -> None:
    """One seed gives no interval: both figures that draw intervals mark that mean with an open
    (white-faced) marker at the mean, the others with filled ones."""
    points = [*POINTS[:2], figures.FigurePoint("resnet9 [a]", "none", 20.0, None, 800.0)]
    curve = [*CURVE, figures.CurvePoint("resnet9", "none", 4.0, 25.0, None)]
    for fig, where in (
        (figures.accuracy_figure(points, CONTEXT), (20.0, None)),
        (figures.privacy_utility_figure(curve, CONTEXT), (None, 25.0)),
    ):
        open_markers = [
            line
            for ax in fig.axes
            for line in ax.get_lines()
            if line.get_marker() == "o" and line.get_markerfacecolor() == "white"
        ]
        assert len(open_markers) == 1
        x, y = open_markers[0].get_xydata()[0]
        assert (where[0] is None or x == where[0]) and (where[1] is None or y == where[1])
