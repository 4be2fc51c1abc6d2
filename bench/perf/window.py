"""One device call for every GPU figure: ``python -m bench.perf gpu-window --out DIR``.

Within one time budget it runs, in order, each stage with its own deadline (a failing or late
stage is reported, and the next still runs):

a. ``tests``: ``pytest -m gpu -x`` (the gpu-report's ``tests`` part, stopped at the first
   failure), time-boxed;
b. ``report``: the rest of the gpu-report (`bench.perf.gpu_report`), its parts' time boxes
   scaled to this stage's share; the tests' result becomes its first section;
c. ``scaling``: with more than one GPU visible, one cell on 1 and on every GPU (NCCL), time
   boxed (`bench.perf.window_scaling`), its table beside the report's page; with one GPU
   (or none) it is skipped, saying why;
d. ``slice``: a real CIFAR-10 slice (`bench.perf.window_slice`): every norm x 1 seed of the
   quick suite at a step count sized from (b)'s measured step times to fit what is left.

Then it packs everything into at most 8 files under ``--out`` (`bench.perf.pack`): one tarball
of the report folders (``gpu_report/``, ``slice/``), ``summary.md``, ``summary.json`` and the
log. ``python -m bench.perf gpu-window-unpack FILES --reports reports`` puts them into
``reports/gpu_<device>/`` and ``reports/cifar10_eps8_quick_slice/`` with the window's summary
as provenance. On the CPU the same command runs at tiny sizes (CI rehearses it) and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench.errors import UsageError
from bench.measure import resolve_device
from bench.perf import pack, window_scaling, window_slice
from bench.perf.gpu_report import GRACE_S, run_part
from bench.perf.parts import PARTS
from bench.perf.parts.base import SIZES, Sizes, error_line
from bench.perf.window_summary import render_summary, summary_facts
from bench.provenance import COMMIT_ENV

#: Each stage's share of the budget left after `PACK_RESERVE_S`, per size; the slice takes the
#: rest. At tiny sizes the report's parts fill their boxes with measurements nobody reads, and
#: the CPU slice's fixed costs (imports, calibration) dominate, so the report gets less.
SHARES = {"full": {"tests": 0.2, "report": 0.33}, "tiny": {"tests": 0.2, "report": 0.15}}
#: Seconds kept at the end of the budget for the summary and the packing, per size.
PACK_RESERVE_S = {"full": 15.0, "tiny": 2.0}
#: The gpu-report parts stage (b) runs (its ``tests`` part is stage (a)).
REPORT_PARTS = tuple(p for p in PARTS if p != "tests")


@dataclass
class Window:
    """One window while it runs: its settings, its clock and what each stage reported.

    Attributes:
        out: Where the packed files go (the device's ``$OUT``).
        work: Where the stages write before packing.
        sizes: The gpu-report's sizes (``full`` on a GPU, ``tiny`` elsewhere).
        device: Where everything runs.
        budget_s: Seconds for the whole window, packing included.
        started: Its start (``time.time()``).
        command: The command line, for the provenance.
        isolate: Each gpu-report part in its own process.
        data_root: An extracted CIFAR-10 imagefolder, when given.
        stages: Each stage's report, in order.
    """

    out: Path
    work: Path
    sizes: Sizes
    device: torch.device
    budget_s: float
    started: float
    command: str
    isolate: bool
    data_root: Path | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.work / "gpu_window.log"

    @property
    def end(self) -> float:
        """When the stages must be done: the budget less the packing's reserve."""
        return self.started + self.budget_s - PACK_RESERVE_S[self.sizes.name]

    def share_s(self, stage: str) -> float:
        """A stage's seconds: its share of the budget after the packing's reserve."""
        return SHARES[self.sizes.name][stage] * (self.end - self.started)

    def say(self, line: str) -> None:
        """One progress line on stderr and in the log."""
        stamp = f"gpu-window [{time.time() - self.started:5.0f} s] {line}"
        print(stamp, file=sys.stderr, flush=True)
        with self.log.open("a") as f:
            f.write(stamp + "\n")


class DataPrep:
    """Extracting and decoding the CIFAR-10 tarball on a thread, beside the CUDA tests."""

    def __init__(self, tarball: Path | None, root: Path | None, dest: Path) -> None:
        self.root, self.error = root, None
        self.thread = None
        if tarball is not None:
            self.thread = threading.Thread(target=self._run, args=(tarball, dest), daemon=True)
            self.thread.start()

    def _run(self, tarball: Path, dest: Path) -> None:
        try:
            self.root = window_slice.prepare_data(tarball, dest)
        except Exception as err:  # reported by the slice, which then has no data
            self.error = error_line(err)

    def busy(self) -> bool:
        """Whether the extraction or decoding is still running."""
        return self.thread is not None and self.thread.is_alive()

    def wait(self, until: float) -> Path | None:
        """The imagefolder root once ready (waiting at most until ``until``), else None."""
        if self.thread is not None:
            self.thread.join(max(0.0, until - time.time()))
            if self.thread.is_alive():
                self.error = "still extracting or decoding at the slice's deadline"
                return None
        return self.root


def stage_tests(w: Window) -> dict[str, Any]:
    """(a) ``pytest -m gpu -x`` through the gpu-report's ``tests`` part, time-boxed."""
    budget = w.share_s("tests")
    sizes = replace(w.sizes, pytest_args=(*w.sizes.pytest_args, "-x"))
    w.say(f"(a) tests: time box {budget:.0f} s")
    result = run_part("tests", sizes, w.device, time.time() + budget)
    result["budget_s"] = budget
    (w.work / "tests.json").write_text(json.dumps([result]))
    counts = result["data"].get("counts", {})
    notes = [result["data"].get("summary") or "no pytest summary", *result.get("notes", [])]
    if result["data"].get("failed"):
        notes += result["data"]["failed"][:5]
    return {
        "name": "tests",
        "budget_s": budget,
        "status": result["status"],
        "error": result.get("error"),
        "counts": counts,
        "notes": notes,
    }


def stage_report(w: Window) -> dict[str, Any]:
    """(b) the gpu-report's other parts in a subprocess, their time boxes scaled to fit."""
    budget = w.share_s("report")
    scale = budget / sum(w.sizes.budgets_s[p] for p in REPORT_PARTS)
    out = w.work / "gpu_report"
    cmd = [sys.executable, "-m", "bench.perf", "gpu-report", "--out", str(out)]
    cmd += ["--sizes", w.sizes.name, "--device", str(w.device), "--parts", ",".join(REPORT_PARTS)]
    cmd += ["--budget-scale", f"{scale:.4f}", "--prior", str(w.work / "tests.json")]
    cmd += ["--isolate" if w.isolate else "--no-isolate"]
    w.say(f"(b) report: time box {budget:.0f} s (each part's box x {scale:.3f})")
    stage: dict[str, Any] = {"name": "report", "budget_s": budget, "notes": []}
    deadline = min(time.time() + budget + GRACE_S, w.end)
    code, stopped = window_slice.run_until(cmd, w.log, deadline)
    stage["status"] = "ok" if code == 0 else "failed"
    if stopped:
        stage.update(status="killed" if code is None else "time box", error=stopped)
    try:
        parts = json.loads((out / "results.json").read_text())["parts"]
    except (OSError, ValueError, KeyError):
        stage.setdefault("error", "no results.json")
        return stage
    stage["parts"] = {p["name"]: p["status"] for p in parts if p["name"] != "tests"}
    # Its exit code also counts the tests' failure, which is stage (a)'s: judge its own parts.
    own = set(stage["parts"].values())
    late = own & {"time box", "killed", "not reached"}
    stage["status"] = "failed" if "failed" in own else ("time box" if late else "ok")
    for p in parts:
        if p["name"] == "tests":
            continue
        stage["notes"] += [f"{p['name']}: {n}" for n in p.get("notes", [])]
        if p.get("error"):
            stage["notes"].append(f"{p['name']}: {p['status']}: {p['error']}")
    return stage


def stage_scaling(w: Window) -> dict[str, Any]:
    """(c) one cell on 1 and on every visible GPU, time boxed; skipped with fewer than two."""
    budget = window_scaling.SHARE * (w.end - w.started)
    deadline = min(time.time() + budget + GRACE_S, w.end)
    out = w.work / "gpu_report" / "scaling.md"  # travels with the report's page
    stage = window_scaling.stage_scaling(w.device, out, w.log, budget, deadline)
    if stage["status"] == "skipped":
        w.say(f"(c) scaling: skipped: {stage['notes'][0]}")
    return stage


def _table(w: Window) -> dict[str, Any]:
    """The gpu-report's table part's data, or nothing where it was not written."""
    try:
        parts = json.loads((w.work / "gpu_report" / "results.json").read_text())["parts"]
    except (OSError, ValueError, KeyError):
        return {}
    return next((p.get("data") or {} for p in parts if p["name"] == "table"), {})


def stage_slice(w: Window, data: DataPrep) -> dict[str, Any]:
    """(d) every norm x 1 seed of the quick suite, sized from (b)'s step times."""
    # reason: the suite loader, only for this stage
    from bench.suite import load_suite

    sizes = window_slice.SLICE_SIZES[w.sizes.name]
    budget = w.end - time.time()
    stage: dict[str, Any] = {"name": "slice", "budget_s": budget, "notes": []}
    root = data.wait(w.end - sizes.startup_s)
    if data.error:
        stage["notes"].append(f"CIFAR-10: {data.error}")
    if root is None and sizes.synthetic is None:
        stage.update(status="not run", error="no CIFAR-10 (give --cifar-tar or --data-root)")
        return stage
    probe = window_slice.overrides(sizes, 1, root)
    cells = load_suite(window_slice.SUITE, probe).cells()
    norms = [c.norm for c in cells]
    t = cells[0].training
    backbone = str(cells[0].backbone).split("[", 1)[0]
    per_norm = window_slice.step_seconds(_table(w), backbone, norms, t.batch_size * t.augmult)
    budget = w.end - time.time()
    steps, notes = window_slice.size_steps(per_norm, budget, sizes)
    stage.update(budget_s=budget, steps=steps, step_seconds=per_norm, norms=norms)
    stage["notes"] += notes
    sets = window_slice.overrides(sizes, steps, root)
    w.say(f"(d) slice: {len(norms)} runs x {steps} steps in {budget:.0f} s")
    out = w.work / "slice"
    result = window_slice.run(sets, out, str(w.device), w.end, w.log)
    stage.update(command=result["command"], runs=result["runs"])
    missing = [n for n in norms if n not in result["runs"]]
    bad = [n for n, r in result["runs"].items() if r["status"] != "ok"]
    if missing:
        stage["notes"].append(f"not reached by the deadline: {', '.join(missing)}")
    error = window_slice.write_leaderboard(out)
    if error:
        stage["notes"].append(f"leaderboard: {error}")
    if result["stopped"]:
        stage["notes"].append(f"runner {result['stopped']}")
    # A cell that failed (a diverged loss, an out-of-memory error) is a result, recorded with its
    # reason; the stage fails only when the runner itself did.
    stage["notes"] += [
        f"{n}: {result['runs'][n]['status']}: {result['runs'][n]['error']}" for n in bad
    ]
    if result["stopped"] or missing:
        stage["status"] = "time box"
    elif result["returncode"] != 0:
        stage.update(status="failed", error=f"the runner exited with {result['returncode']}")
    else:
        stage["status"] = "ok"
    return stage


def run_window(w: Window, data: DataPrep) -> dict[str, Any]:
    """Run the four stages, each failure-isolated, then write the summary and pack."""
    w.work.mkdir(parents=True, exist_ok=True)
    w.say(f"budget {w.budget_s:.0f} s, {w.sizes.name} sizes on {w.device}; work in {w.work}")
    stages = (("tests", stage_tests), ("report", stage_report), ("scaling", stage_scaling))
    for name, stage in (*stages, ("slice", None)):
        began, busy = time.time(), data.busy()
        try:
            result = stage(w) if stage else stage_slice(w, data)
        except Exception as err:  # one stage's crash is that stage's
            result = {"name": name, "status": "failed", "error": error_line(err), "notes": []}
        if busy and name == "report":
            result["notes"].append(
                "the CIFAR-10 tarball was still being extracted or decoded "
                "when the perf parts began: their timings shared the CPU"
            )
        result["seconds"] = time.time() - began
        w.stages.append(result)
        w.say(f"{name}: {result['status']} in {result['seconds']:.0f} s")
    facts = summary_facts(w.device, w.sizes.name, w.command, w.budget_s)
    summary = {**facts, "stages": w.stages, "wall_s": time.time() - w.started}
    (w.work / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (w.work / "summary.md").write_text(render_summary(summary))
    w.say(f"packing into {w.out}")
    folders = {"gpu_report": w.work / "gpu_report", "slice": w.work / "slice"}
    loose = [w.work / n for n in ("summary.md", "summary.json", "gpu_window.log")]
    summary["files"] = [p.name for p in pack.pack(w.out, folders, loose)]
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``gpu-window`` subcommand's flags."""
    p.add_argument("--out", type=Path, required=True, help="where the packed files go ($OUT)")
    p.add_argument("--budget-s", type=float, default=420.0, help="the whole window, seconds")
    p.add_argument("--sizes", choices=("auto", *SIZES), default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--cifar-tar", type=Path, help="cifar10-jpeg.tar.gz, extracted into --work")
    p.add_argument("--data-root", type=Path, help="an extracted CIFAR-10 imagefolder")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new one in /tmp)")
    p.add_argument("--commit", help=f"the commit the copied tree is (sets {COMMIT_ENV})")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None)


def process_started() -> float:
    """When this process started (wall clock, from ``/proc``), so that the budget counts the
    imports before the window's first line too; now, where that cannot be read or looks
    wrong (over two minutes ago)."""
    now = time.time()
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        stat = Path("/proc/stat").read_text().splitlines()
        boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return now
    return started if now - 120 <= started <= now else now


def window_from_args(args: argparse.Namespace, argv: list[str]) -> tuple[Window, DataPrep]:
    """The window the flags describe, and its data preparation (started)."""
    if args.budget_s <= 0:
        raise UsageError(f"--budget-s: must be positive (given: {args.budget_s})")
    if args.cifar_tar is not None and not args.cifar_tar.is_file():
        raise UsageError(f"--cifar-tar: no such file (given: {args.cifar_tar})")
    if args.data_root is not None and not (args.data_root / "train").is_dir():
        raise UsageError(f"--data-root: no train/ folder in {args.data_root}")
    if args.commit:
        os.environ[COMMIT_ENV] = args.commit
    device = resolve_device(args.device)
    name = args.sizes if args.sizes != "auto" else ("full" if device.type == "cuda" else "tiny")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-window-"))
    work.mkdir(parents=True, exist_ok=True)
    w = Window(
        out=args.out,
        work=work,
        sizes=SIZES[name],
        device=device,
        budget_s=args.budget_s,
        started=process_started(),
        command="python -m bench.perf " + " ".join(shlex.quote(a) for a in argv),
        isolate=device.type == "cuda" if args.isolate is None else args.isolate,
    )
    return w, DataPrep(args.cifar_tar, args.data_root, work / "cifar10-jpeg")


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    """The ``gpu-window`` subcommand: 0 when every stage ran (time boxes included), else 1."""
    w, data = window_from_args(args, argv)
    summary = run_window(w, data)
    print(w.out / "summary.md")
    done = ("ok", "time box", "skipped")
    return 0 if all(s["status"] in done for s in summary["stages"]) else 1
