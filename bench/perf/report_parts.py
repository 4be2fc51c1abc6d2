"""The parts of the GPU report: what each measures (into JSON values) and how it renders.

Each part is a pair of functions registered in `PARTS`: ``measure(run)`` fills ``run.data``,
calling ``run.measured()`` after each measurement (which saves what it has, so that a killed
part keeps it) and checking ``run.expired()`` before the next; ``render(data)`` turns that data
into Markdown lines. `Sizes` holds every size and time box: `FULL` for a GPU, `TINY` for the CPU
and CI.
"""

from __future__ import annotations

import gc
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import norms
from bench.config import DEFAULT_NORM
from bench.measure import REPO, synchronize, tensor_peak_bytes
from bench.perf.kinds import KINDS, make_step, measure_one, prepare_for_timing, random_device_data

FULL_SUITE = REPO / "suites" / "cifar10_eps8.yaml"
QUICK_SUITE = REPO / "suites" / "cifar10_eps8_quick.yaml"
#: The quick suite's TAN formula's assumptions (see that suite's header).
QUICK_BUDGET_S = 1200.0
QUICK_OVERHEAD_S = 30.0


@dataclass(frozen=True)
class Sizes:
    """How large the report's measurements are.

    Attributes:
        name: ``full`` (a GPU) or ``tiny`` (CPU and CI).
        width: Backbone width multiplier of the table, max-batch and bf16 parts.
        image: Image side, pixels.
        table_batch: Physical batch of the table and bf16 parts (one physical batch a step).
        warmup: Untimed steps before the timed ones.
        reps: Timed steps (the median is reported).
        backbones: The table's backbones.
        max_batch_start: First batch the max-batch search tries; it doubles from there.
        max_batch_cap: The search stops there (reported as "at least").
        cpu_mem_budget_bytes: On the CPU, "fits" means a tensor peak below this.
        pipeline_batch: Expected batch of the engine-vs-Opacus comparison.
        pipeline_steps: Its timed steps per loop.
        pipeline_warmup: Its untimed steps per loop.
        pipeline_examples: Training-set size it samples from.
        pipeline_workers: DataLoader workers of Opacus' tutorial loop.
        recipe_width: Width of the full-recipe models (1.0: the suite's own).
        recipe_image: Image side of the full-recipe step.
        recipe_physical: Physical batch of the full-recipe step (None: the suite's).
        recipe_views: Augmentation multiplicity (None: the suite's).
        recipe_reps: Timed steps per point of the full-recipe fit.
        pytest_args: What the tests part passes to pytest.
        budgets_s: Each part's time box, seconds.
    """

    name: str
    width: float
    image: int
    table_batch: int
    warmup: int
    reps: int
    backbones: tuple[str, ...]
    max_batch_start: int
    max_batch_cap: int
    cpu_mem_budget_bytes: int
    pipeline_batch: int
    pipeline_steps: int
    pipeline_warmup: int
    pipeline_examples: int
    pipeline_workers: int
    recipe_width: float
    recipe_image: int
    recipe_physical: int | None
    recipe_views: int | None
    recipe_reps: int
    pytest_args: tuple[str, ...]
    budgets_s: dict[str, float] = field(default_factory=dict)


FULL = Sizes(
    name="full",
    width=1.0,
    image=32,
    table_batch=512,
    warmup=2,
    reps=3,
    backbones=("wrn16_4", "resnet9"),
    max_batch_start=512,
    max_batch_cap=32768,
    cpu_mem_budget_bytes=0,
    pipeline_batch=512,
    pipeline_steps=10,
    pipeline_warmup=3,
    pipeline_examples=50_000,
    pipeline_workers=min(8, os.cpu_count() or 1),
    recipe_width=1.0,
    recipe_image=32,
    recipe_physical=None,
    recipe_views=None,
    recipe_reps=2,
    pytest_args=("-m", "gpu"),
    budgets_s={
        "tests": 150,
        "table": 140,
        "max_batch": 50,
        "pipeline": 35,
        "bf16": 20,
        "recipe": 50,
    },
)

TINY = Sizes(
    name="tiny",
    width=0.125,
    image=16,
    table_batch=4,
    warmup=0,
    reps=1,
    backbones=("wrn16_4", "resnet9"),
    max_batch_start=4,
    max_batch_cap=32,
    cpu_mem_budget_bytes=4 << 20,
    pipeline_batch=8,
    pipeline_steps=1,
    pipeline_warmup=1,
    pipeline_examples=64,
    pipeline_workers=0,
    recipe_width=0.125,
    recipe_image=16,
    recipe_physical=2,
    recipe_views=2,
    recipe_reps=1,
    pytest_args=("-m", "gpu", "tests/test_gpu.py"),
    # A part always makes its first measurement; the rest fill what the box leaves.
    budgets_s={
        "tests": 30,
        "table": 6,
        "max_batch": 3,
        "pipeline": 10,
        "bf16": 4,
        "recipe": 4,
    },
)

SIZES = {s.name: s for s in (FULL, TINY)}


@dataclass
class PartRun:
    """One part while it runs: its inputs, its deadline and what it has measured so far.

    ``data`` holds only JSON values, so that an isolated part's results survive its process
    (`save` writes them after every measurement).
    """

    name: str
    sizes: Sizes
    device: torch.device
    deadline: float
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    save: Callable[[], None] = lambda: None
    count: int = 0

    def measured(self) -> None:
        """One more measurement is in ``data``: save it."""
        self.count += 1
        self.save()

    def expired(self) -> bool:
        """Past the deadline, once something was measured: every part makes at least its
        first measurement, however little of its time box an isolated part's start-up left."""
        return self.count > 0 and time.time() >= self.deadline

    def left_s(self) -> float:
        return max(0.0, self.deadline - time.time())


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def error_line(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    return f"{type(err).__name__}: {err}".splitlines()[0][:300]


# --- part: CUDA tests ---------------------------------------------------------------------------


_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def measure_tests(run: PartRun) -> None:
    """``pytest <sizes.pytest_args> -q`` in a subprocess, killed at the time box."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *run.sizes.pytest_args,
        "-q",
        "-rfEs",
        "--benchmark-disable",
        "-p",
        "no:cacheprovider",
    ]
    run.data["command"] = "python -m pytest " + " ".join(cmd[3:])
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, run.left_s())
        )
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        raw = err.stdout or b""
        out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        rc = None
        run.notes.append("pytest was killed at the time box; counts are of what had finished")
    run.data["seconds"] = time.perf_counter() - started
    run.data["returncode"] = rc
    lines = out.splitlines()
    summary = next((ln for ln in reversed(lines) if _COUNT.search(ln)), "")
    run.data["summary"] = summary.strip("= ")
    run.data["counts"] = {k: int(n) for n, k in _COUNT.findall(summary)}
    run.data["skipped"] = [ln for ln in lines if ln.startswith("SKIPPED")][:20]
    run.data["failed"] = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))][:40]
    if rc not in (0, None):
        raise RuntimeError(f"pytest exited with code {rc}: {run.data['summary'] or lines[-1:]}")


def render_tests(data: dict[str, Any]) -> list[str]:
    out = [f"`{data.get('command', '')}`", "", f"Result: **{data.get('summary') or 'none'}**"]
    if data.get("failed"):
        out += ["", "Failures:", "", "```", *data["failed"], "```"]
    if data.get("skipped"):
        out += ["", "Skips:", "", "```", *data["skipped"], "```"]
    return out


# --- part: DP/non-DP table ----------------------------------------------------------------------


def measure_table(run: PartRun) -> None:
    """Every kind for every (backbone, norm): the reference pair first, so a time box cuts the
    least important measurements."""
    s = run.sizes
    names = [DEFAULT_NORM, *[n for n in norms.list_norms() if n != DEFAULT_NORM]]
    rows: list[dict[str, Any]] = []
    run.data.update(
        batch=s.table_batch, width=s.width, image=s.image, warmup=s.warmup, reps=s.reps, rows=rows
    )
    todo = [(b, n, k) for b in s.backbones for n in names for k in KINDS]
    for i, (b, n, k) in enumerate(todo):
        if run.expired():
            run.notes.append(f"time box reached: {i} of {len(todo)} measurements made")
            break
        row: dict[str, Any] = {"backbone": b, "norm": n, "kind": k}
        try:
            r = measure_one(
                b,
                n,
                k,
                batch=s.table_batch,
                width=s.width,
                size=s.image,
                warmup=s.warmup,
                reps=s.reps,
                device=run.device,
            )
            row.update(seconds=r["seconds"], mem_bytes=r["mem_bytes"])
            run.data["mem_measure"] = r["mem_measure"]
        except Exception as err:  # one cell's failure (e.g. out of memory) is that cell's
            row["error"] = error_line(err)
        rows.append(row)
        _free(run.device)
        run.measured()


def _cell(rows: dict[str, dict[str, Any]], kind: str) -> dict[str, Any] | None:
    r = rows.get(kind)
    return r if r and "seconds" in r else None


def render_table(data: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    pairs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in data.get("rows", []):
        pairs.setdefault((r["backbone"], r["norm"]), {})[r["kind"]] = r
    headers = ["backbone", "norm", "non-DP ms", "non-DP MiB"]
    for k in KINDS[1:]:
        headers += [f"{k} ms", f"{k} time ratio", f"{k} mem ratio"]
    headers.append("Opacus ghost / book-keeping")
    table, errors = [], []
    for (b, n), rows in pairs.items():
        base = _cell(rows, "nonprivate")
        line = [b, n]
        if base:
            line += [f"{base['seconds'] * 1000:.1f}", f"{base['mem_bytes'] / 2**20:.0f}"]
        else:
            line += ["-", "-"]
        for k in KINDS[1:]:
            r = _cell(rows, k)
            if r is None:
                line += ["-", "-", "-"]
                continue
            line.append(f"{r['seconds'] * 1000:.1f}")
            line += (
                [
                    f"{r['seconds'] / base['seconds']:.2f}",
                    f"{r['mem_bytes'] / max(base['mem_bytes'], 1):.2f}",
                ]
                if base
                else ["-", "-"]
            )
        bk, ghost = _cell(rows, "dp"), _cell(rows, "dp-opacus-ghost")
        line.append(f"{ghost['seconds'] / bk['seconds']:.2f}" if bk and ghost else "-")
        table.append(line)
        errors += [f"{b} {n} {k}: {r['error']}" for k, r in rows.items() if "error" in r]
    out = [
        f"Physical batch {data.get('batch')} (one physical batch a step), width "
        f"{data.get('width')}, {data.get('image')}x{data.get('image')} images, one view, fp32, "
        f"noise multiplier 1, clip 1; time: median of {data.get('reps')} steps after "
        f"{data.get('warmup')} warm-up, each between device synchronisations; memory: "
        f"{data.get('mem_measure', 'n/a')}. Ratios are to the non-private step. "
        "All measurements in one process, one after another.",
        "",
        tabulate(table, headers, tablefmt="github") if table else "(nothing measured)",
    ]
    if errors:
        out += ["", "Not measured:", "", *[f"- {e}" for e in errors]]
    return out


# --- part: largest physical batch ---------------------------------------------------------------


def _fits(run: PartRun, backbone: str, norm: str, kind: str, batch: int) -> bool:
    """Whether one step at ``batch`` runs: without a CUDA out-of-memory error on a GPU; on the
    CPU, with a tensor peak within `Sizes.cpu_mem_budget_bytes`."""
    s = run.sizes
    try:
        step, x, y = make_step(
            backbone, norm, kind, batch=batch, width=s.width, size=s.image, device=run.device
        )
        if run.device.type == "cuda":
            step(x, y)
            synchronize(run.device)
            return True
        return tensor_peak_bytes(lambda: step(x, y)) <= s.cpu_mem_budget_bytes
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        step = x = y = None
        _free(run.device)


def measure_max_batch(run: PartRun) -> None:
    """Per kind, on (first backbone, default norm): double from `Sizes.max_batch_start` until a
    step does not fit (or the cap), then bisect to within 1/16."""
    s = run.sizes
    backbone, norm = s.backbones[0], DEFAULT_NORM
    kinds: dict[str, dict[str, Any]] = {}
    run.data.update(backbone=backbone, norm=norm, width=s.width, image=s.image, kinds=kinds)
    if run.device.type != "cuda":
        run.data["criterion"] = f"tensor peak within {s.cpu_mem_budget_bytes / 2**20:.0f} MiB"
    else:
        total = torch.cuda.get_device_properties(run.device).total_memory
        run.data["criterion"] = f"no CUDA out-of-memory error ({total / 2**30:.1f} GiB device)"
    for kind in KINDS:
        if run.expired():
            run.notes.append(f"time box reached before {kind}")
            break
        res: dict[str, Any] = {"tried": {}}
        kinds[kind] = res
        try:
            lo, hi, b = 0, None, s.max_batch_start
            while b <= s.max_batch_cap and not run.expired():
                ok = _fits(run, backbone, norm, kind, b)
                res["tried"][str(b)] = ok
                run.measured()
                if not ok:
                    hi = b
                    break
                lo, b = b, b * 2
            while hi is not None and hi - lo > max(1, lo // 16) and not run.expired():
                mid = (lo + hi) // 2
                mid = mid - mid % 8 if mid > 64 else mid
                if mid <= lo:
                    break
                ok = _fits(run, backbone, norm, kind, mid)
                res["tried"][str(mid)] = ok
                run.measured()
                lo, hi = (mid, hi) if ok else (lo, mid)
            res["largest"] = lo
            if hi is None:
                res["bound"] = "cap reached" if b > s.max_batch_cap else "time box"
            else:
                res["bound"] = "time box" if run.expired() else "bisected"
            res["first_failing"] = hi
        except Exception as err:
            res["error"] = error_line(err)
        run.measured()


def render_max_batch(data: dict[str, Any]) -> list[str]:
    out = [
        f"{data.get('backbone')} with {data.get('norm')}, width {data.get('width')}, "
        f"{data.get('image')}x{data.get('image')}, one view, fp32; fits: "
        f"{data.get('criterion')}. One process, one trial after another (fragmentation after "
        "a failed trial may lower a figure slightly).",
        "",
        "| kind | largest batch that fits | smallest tried that did not | search |",
        "|---|---|---|---|",
    ]
    for kind, r in data.get("kinds", {}).items():
        if "error" in r:
            out.append(f"| {kind} | failed: {r['error']} | | |")
            continue
        largest = r.get("largest")
        prefix = ">= " if r.get("first_failing") is None else ""
        out.append(
            f"| {kind} | {prefix}{largest} | {r.get('first_failing') or '-'} | "
            f"{r.get('bound', '-')}, tried {', '.join(r['tried'])} |"
        )
    return out


# --- part: engine vs Opacus' tutorial -----------------------------------------------------------


def measure_pipeline(run: PartRun) -> None:
    from bench.perf.tables import opacus_tutorial_comparison

    s = run.sizes
    run.data.update(
        backbone=s.backbones[0],
        norm=DEFAULT_NORM,
        batch=s.pipeline_batch,
        width=s.width,
        steps=s.pipeline_steps,
        warmup=s.pipeline_warmup,
        examples=s.pipeline_examples,
        workers=s.pipeline_workers,
    )
    run.data["result"] = opacus_tutorial_comparison(
        s.backbones[0],
        DEFAULT_NORM,
        batch=s.pipeline_batch,
        steps=s.pipeline_steps,
        warmup=s.pipeline_warmup,
        n=s.pipeline_examples,
        width=s.width,
        workers=s.pipeline_workers,
        device=run.device,
    )


def render_pipeline(data: dict[str, Any]) -> list[str]:
    r = data.get("result")
    out = [
        f"{data.get('backbone')} with {data.get('norm')}, width {data.get('width')}, expected "
        f"batch {data.get('batch')} (Poisson), {data.get('examples')} random CIFAR-shaped "
        f"images, {data.get('steps')} timed steps after {data.get('warmup')}, data loading "
        f"included; Opacus' DataLoader with {data.get('workers')} workers and per-image "
        "torchvision crops and flips; the engine samples and augments on the device.",
        "",
    ]
    if not r:
        return [*out, "(not measured)"]
    return [
        *out,
        "| pipeline | images/s | engine speedup |",
        "|---|---|---|",
        f"| this engine (book-keeping) | {r['engine_img_s']:.0f} | 1.00 |",
        f"| Opacus tutorial, hooks | {r['opacus_tutorial_img_s']:.0f} | {r['speedup']:.2f} |",
        f"| Opacus tutorial, ghost | {r['opacus_tutorial_ghost_img_s']:.0f} | "
        f"{r['speedup_vs_ghost']:.2f} |",
    ]


# --- part: bf16 vs fp32 -------------------------------------------------------------------------


def measure_bf16(run: PartRun) -> None:
    s = run.sizes
    rows: list[dict[str, Any]] = []
    run.data.update(batch=s.table_batch, width=s.width, image=s.image, reps=s.reps, rows=rows)
    for b in s.backbones:
        for kind in ("nonprivate", "dp"):
            row: dict[str, Any] = {"backbone": b, "norm": DEFAULT_NORM, "kind": kind}
            rows.append(row)
            for precision in ("fp32", "bf16"):
                if run.expired():
                    run.notes.append("time box reached")
                    return
                try:
                    r = measure_one(
                        b,
                        DEFAULT_NORM,
                        kind,
                        batch=s.table_batch,
                        width=s.width,
                        size=s.image,
                        warmup=s.warmup,
                        reps=s.reps,
                        precision=precision,
                        device=run.device,
                    )
                    row[precision] = {"seconds": r["seconds"], "mem_bytes": r["mem_bytes"]}
                except Exception as err:
                    row[precision] = {"error": error_line(err)}
                _free(run.device)
                run.measured()


def render_bf16(data: dict[str, Any]) -> list[str]:
    out = [
        f"Physical batch {data.get('batch')}, width {data.get('width')}, "
        f"{data.get('image')}x{data.get('image')}; bf16 autocast for forward and backward, "
        "per-example norms and clipped sums in fp32 (`training.precision: bf16`).",
        "",
        "| backbone | norm | step | fp32 ms | bf16 ms | bf16 speed-up | fp32 MiB | bf16 MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data.get("rows", []):
        a, b = r.get("fp32", {}), r.get("bf16", {})
        if "seconds" not in a or "seconds" not in b:
            err = a.get("error") or b.get("error") or "not measured"
            out.append(f"| {r['backbone']} | {r['norm']} | {r['kind']} | {err} | | | | |")
            continue
        out.append(
            f"| {r['backbone']} | {r['norm']} | {r['kind']} | {a['seconds'] * 1000:.1f} | "
            f"{b['seconds'] * 1000:.1f} | {a['seconds'] / b['seconds']:.2f} | "
            f"{a['mem_bytes'] / 2**20:.0f} | {b['mem_bytes'] / 2**20:.0f} |"
        )
    return out


# --- part: one full-recipe step, projected --------------------------------------------------------


def _recipe_step_times(run: PartRun, cell, physical: int, views: int) -> tuple[float, float]:
    """(seconds per physical pass, seconds per step besides them), by timing steps of one and
    of two physical batches (augmentation on the device included) and fitting a line."""
    from bench.backbones import create_backbone
    from bench.train.setup import build_dp_step

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


def measure_recipe(run: PartRun) -> None:
    """Per (backbone, norm) of the full suite's grid: seconds per physical pass and per step
    besides them, then projected step time, hours per run and for the suite."""
    from bench.loading import load_suite
    from bench.plan import data_size

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
        _free(run.device)
        run.measured()
    run.data["quick"] = _quick_sizing(run.data)


def _quick_sizing(data: dict[str, Any]) -> dict[str, Any]:
    """The batch B' of the quick suite's TAN formula (its header), from the measured passes of
    its backbone with each of its norms; None where a pair was not measured."""
    from bench.loading import load_suite

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


def render_recipe(data: dict[str, Any]) -> list[str]:
    from tabulate import tabulate

    b, p, k = data.get("batch"), data.get("physical"), data.get("views")
    steps = data.get("steps")
    passes = b / p if b and p else float("nan")
    out = [
        f"`suites/{data.get('suite')}.yaml`'s training configuration: expected batch {b}, "
        f"physical batch {p} examples x {k} views, {steps} steps, `{data.get('mode')}`, "
        f"{data.get('precision')}, width {data.get('width')}, "
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
    headers = [
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
    out += ["", tabulate(rows, headers, tablefmt="github") if rows else "(nothing measured)"]
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
        out += [
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
    return out


#: name -> (title, measure, render), in report order.
PARTS: dict[str, tuple[str, Callable[[PartRun], None], Callable[[dict], list[str]]]] = {
    "tests": ("CUDA tests (`pytest -m gpu`)", measure_tests, render_tests),
    "table": ("DP/non-DP step time and memory", measure_table, render_table),
    "max_batch": ("Largest physical batch per kind", measure_max_batch, render_max_batch),
    "pipeline": ("The engine against Opacus' tutorial", measure_pipeline, render_pipeline),
    "bf16": ("bf16 against fp32", measure_bf16, render_bf16),
    "recipe": ("One full-recipe step per norm, projected", measure_recipe, render_recipe),
}
