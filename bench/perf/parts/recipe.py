"""GPU-report part ``recipe``: one full-recipe step per (backbone, norm), projected to hours.

It also sizes the quick suite: the batch its TAN formula (``suites/cifar10_eps8_quick.yaml``'s
header) gives from the measured passes.
"""

from __future__ import annotations

import math
import time
from typing import Any

from tabulate import tabulate

from bench.backbones import create_backbone
from bench.measure import synchronize
from bench.perf.kinds import prepare_for_timing, random_device_data
from bench.perf.parts.base import PartRun, error_line, free_memory
from bench.plan import data_size
from bench.provenance import REPO
from bench.suite import load_suite
from bench.train.setup import build_dp_step

TITLE = "One full-recipe step per norm, projected"

FULL_SUITE = REPO / "suites" / "cifar10_eps8.yaml"
QUICK_SUITE = REPO / "suites" / "cifar10_eps8_quick.yaml"
#: The quick suite's TAN formula's assumptions (see that suite's header).
QUICK_BUDGET_S = 1200.0
QUICK_OVERHEAD_S = 30.0

#: The projection table's columns.
HEADERS = [
    "backbone",
    "norm",
    "s per physical pass",
    "s per step besides",
    "projected s per step",
    "images/s",
    "hours per run",
    "runs",
    "hours",
]


def _recipe_step_times(run: PartRun, cell, physical: int, views: int) -> tuple[float, float]:
    """(seconds per physical pass, seconds per step besides them), by timing steps of one and
    of two physical batches (augmentation on the device included) and fitting a line."""
    s, t = run.sizes, cell.training
    params = {"width": s.recipe_width} if s.recipe_width != 1.0 else {}
    model = create_backbone(cell.backbone, norm=cell.norm, **params).to(run.device)
    prepare_for_timing(model, cell.norm, s.recipe_image, run.device)
    model.train()
    step = build_dp_step(
        model,
        t,
        noise_multiplier=1.0,
        max_grad_norm=cell.privacy.max_grad_norm,
        max_physical_batch=physical,
    )
    data = random_device_data(2 * physical, run.device, s.recipe_image)
    gen = data.generator(0, "augmentation")

    def one(m: int) -> float:
        synchronize(run.device)
        t0 = time.perf_counter()
        x = data.augment(
            data.train_x[: m * physical],
            views=views,
            padding=t.crop_padding,
            flip=True,
            generator=gen,
        )
        step(x, data.train_y[: m * physical])
        synchronize(run.device)
        return time.perf_counter() - t0

    one(1)  # warm-up
    t1 = sorted(one(1) for _ in range(s.recipe_reps))[s.recipe_reps // 2]
    t2 = sorted(one(2) for _ in range(s.recipe_reps))[s.recipe_reps // 2]
    per_pass = t2 - t1
    if per_pass <= 0:  # timing noise larger than a pass: charge everything to the passes
        return t2 / 2, 0.0
    return per_pass, max(0.0, t1 - per_pass)


def measure(run: PartRun) -> None:
    """Per (backbone, norm) of the full suite's grid: seconds per physical pass and per step
    besides them, then projected step time, hours per run and for the suite."""
    s = run.sizes
    suite = load_suite(FULL_SUITE)
    cells = suite.cells()
    t = cells[0].training
    physical = s.recipe_physical or t.max_physical_batch
    views = s.recipe_views or t.augmult
    n_private = data_size(cells[0].data).n_private
    pairs: dict[str, dict[str, Any]] = {}
    run.data.update(
        suite=suite.name,
        batch=t.batch_size,
        physical=physical,
        views=views,
        suite_physical=t.max_physical_batch,
        suite_views=t.augmult,
        steps=t.num_steps(n_private),
        width=s.recipe_width,
        image=s.recipe_image,
        mode=t.grad_sample_mode,
        precision=t.precision,
        runs_per_pair={},
        pairs=pairs,
    )
    for c in cells:
        key = f"{c.backbone} {c.norm}"
        run.data["runs_per_pair"][key] = run.data["runs_per_pair"].get(key, 0) + 1
    for c in cells:
        key = f"{c.backbone} {c.norm}"
        if key in pairs:
            continue
        if run.expired():
            total = len(run.data["runs_per_pair"])
            run.notes.append(f"time box reached: {len(pairs)} of {total} pairs")
            break
        try:
            per_pass, overhead = _recipe_step_times(run, c, physical, views)
            pairs[key] = {
                "backbone": c.backbone,
                "norm": c.norm,
                "pass_s": per_pass,
                "overhead_s": overhead,
            }
        except Exception as err:
            pairs[key] = {"backbone": c.backbone, "norm": c.norm, "error": error_line(err)}
        free_memory(run.device)
        run.measured()
    run.data["quick"] = _quick_sizing(run.data)


def _quick_sizing(data: dict[str, Any]) -> dict[str, Any]:
    """The batch B' of the quick suite's TAN formula (its header), from the measured passes of
    its backbone with each of its norms; None where a pair was not measured."""
    quick = load_suite(QUICK_SUITE)
    cells = quick.cells()
    backbone = cells[0].backbone
    quick_norms = sorted({c.norm for c in cells})
    seeds = len({c.seed for c in cells})
    measured = [data["pairs"].get(f"{backbone} {n}") for n in quick_norms]
    out: dict[str, Any] = {
        "backbone": backbone,
        "norms": quick_norms,
        "seeds": seeds,
        "runs": len(cells),
        "budget_s": QUICK_BUDGET_S,
        "overhead_s": QUICK_OVERHEAD_S,
        "steps": data["steps"],
        "physical": data["physical"],
        "full_batch": data["batch"],
        "batch": None,
    }
    if any(m is None or "error" in m for m in measured):
        out["reason"] = "not every pair of the quick suite was measured"
        return out
    sum_a = sum(m["overhead_s"] for m in measured)
    sum_b = sum(m["pass_s"] for m in measured)
    s, p = data["steps"], data["physical"]
    room = QUICK_BUDGET_S - len(cells) * QUICK_OVERHEAD_S - seeds * s * sum_a
    out["batch"] = max(0, math.floor(p * room / (seeds * s * sum_b))) if sum_b > 0 else None
    if out["batch"]:
        out["k"] = data["batch"] / out["batch"]
    else:
        out["reason"] = "the per-step overheads alone exceed T: shorten S or K"
    return out


def _intro(data: dict[str, Any], passes: float) -> list[str]:
    """What was timed and how it is projected; a warning where the sizes are not the suite's."""
    b, p, k = data.get("batch"), data.get("physical"), data.get("views")
    out = [
        f"`suites/{data.get('suite')}.yaml`'s training configuration: expected batch {b}, "
        f"physical batch {p} examples x {k} views, {data.get('steps')} steps, "
        f"`{data.get('mode')}`, {data.get('precision')}, width {data.get('width')}, "
        f"{data.get('image')}x{data.get('image')}. Each step was timed with one and with two "
        "physical batches (augmentation on the device included; Poisson sampling, evaluation, "
        "setup, the privacy calibration and the non-private measurement excluded) and a line "
        f"fitted: step = overhead + pass x {passes:.0f} (B / physical batch).",
    ]
    if (p, k) != (data.get("suite_physical"), data.get("suite_views")):
        out += [
            "",
            f"**Tiny sizes**: the suite's physical batch is {data.get('suite_physical')} x "
            f"{data.get('suite_views')} views; the projection below applies the suite's step "
            "count to these tiny steps and predicts nothing about the real recipe.",
        ]
    return out


def _projection(data: dict[str, Any], passes: float) -> tuple[list[list[Any]], float, list[str]]:
    """The table's rows, the projected device-hours of the measured pairs, and one line per
    pair that was not measured."""
    b, k, steps = data.get("batch"), data.get("views"), data.get("steps")
    rows, total_h, missing = [], 0.0, []
    for key, runs in data.get("runs_per_pair", {}).items():
        m = data.get("pairs", {}).get(key)
        if not m or "error" in m:
            missing.append(f"{key}: {m['error'] if m else 'not measured (time box)'}")
            continue
        step_s = m["overhead_s"] + m["pass_s"] * passes
        run_h = steps * step_s / 3600
        total_h += runs * run_h
        rows.append(
            [
                m["backbone"],
                m["norm"],
                f"{m['pass_s']:.3f}",
                f"{m['overhead_s']:.3f}",
                f"{step_s:.2f}",
                f"{b * k / step_s:.0f}",
                f"{run_h:.2f}",
                runs,
                f"{runs * run_h:.1f}",
            ]
        )
    return rows, total_h, missing


def _quick_lines(q: dict[str, Any]) -> list[str]:
    """The quick suite's sizing: the formula with its inputs, and B' or why there is none."""
    return [
        "",
        "### Quick-suite sizing (the TAN formula in `suites/cifar10_eps8_quick.yaml`)",
        "",
        f"{q['runs']} runs ({q['backbone']}, {len(q['norms'])} norms x {q['seeds']} seeds) "
        f"in T = {q['budget_s']:.0f} s with o = {q['overhead_s']:.0f} s per run, S = "
        f"{q['steps']} steps, P = {q['physical']}: B' = P (T - R o - seeds S sum_n a_n) / "
        "(seeds S sum_n b_n) = "
        + (
            f"**{q['batch']}** (k = B / B' = {q['k']:.0f}: set "
            f"`privacy.simulate_batch_size: {q['batch']}`, which runs at noise "
            "multiplier sigma / k)."
            if q.get("batch")
            else f"**none**: {q.get('reason', 'not computed')}."
        ),
    ]


def render(data: dict[str, Any]) -> list[str]:
    """How the steps were timed, the projection per pair and for the suite, the quick sizing."""
    b, p = data.get("batch"), data.get("physical")
    passes = b / p if b and p else float("nan")
    out = _intro(data, passes)
    rows, total_h, missing = _projection(data, passes)
    out += ["", tabulate(rows, HEADERS, tablefmt="github") if rows else "(nothing measured)"]
    if rows:
        which = "a lower bound: some pairs are missing" if missing else "every pair measured"
        out += [
            "",
            f"Projected suite: **{total_h:.1f} device-hours** ({which}; steps only). This "
            "figure, not the A100 estimate, belongs in the header of "
            f"`suites/{data.get('suite')}.yaml` once measured on a GPU at full sizes.",
        ]
    if missing:
        out += ["", *[f"- {m}" for m in missing]]
    q = data.get("quick")
    if q:
        out += _quick_lines(q)
    return out
