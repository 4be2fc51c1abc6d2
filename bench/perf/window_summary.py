"""The GPU window's summary (provenance, each stage and what it did not reach) and its unpacking
into ``reports/``."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from bench.errors import UsageError
from bench.perf import pack
from bench.perf.window_slice import NAME as SLICE_NAME
from bench.provenance import environment_facts, git_commit

#: What each stage is, in the summary's words.
TITLES = {
    "tests": "(a) CUDA tests, `pytest -m gpu -x`",
    "report": "(b) gpu-report (perf page)",
    "scaling": "(c) scaling: one cell on 1 and on every GPU (NCCL)",
    "slice": "(d) CIFAR-10 slice: quick suite, every norm x 1 seed",
}


def summary_facts(device: Any, sizes: str, command: str, budget_s: float) -> dict[str, Any]:
    """Provenance of a window: device, versions, commit, command, date, budget."""
    env = environment_facts()
    on_gpu = device.type == "cuda"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "commit": git_commit(),
        "device": str(device),
        "device_name": env.get("gpus") if on_gpu else f"CPU: {env.get('cpu')}",
        "on_gpu": on_gpu,
        "sizes": sizes,
        "budget_s": budget_s,
        "environment": env,
    }


def _stage_lines(s: dict[str, Any]) -> list[str]:
    """One stage's section: status, time, and every note."""
    status = s["status"] + (f": {s['error']}" if s.get("error") else "")
    out = ["", f"## {TITLES.get(s['name'], s['name'])}", ""]
    out.append(
        f"**{status}** in {s.get('seconds', 0):.0f} s (time box {s.get('budget_s', 0):.0f} s)"
    )
    if s.get("parts"):
        out += ["", "Parts: " + ", ".join(f"{k} {v}" for k, v in s["parts"].items())]
    if s.get("runs"):
        out += [
            "",
            "| norm | status | test acc | images/s | epsilon spent |",
            "|---|---|---|---|---|",
        ]
        for norm, r in s["runs"].items():
            acc = f"{r['test_acc']:.4f}" if r.get("test_acc") is not None else "-"
            rate = f"{r['throughput_img_s']:.0f}" if r.get("throughput_img_s") else "-"
            eps = f"{r['epsilon_spent']:.3f}" if r.get("epsilon_spent") is not None else "-"
            out.append(f"| {norm} | {r['status']} | {acc} | {rate} | {eps} |")
    if s.get("command"):
        out += ["", f"`{s['command']}`"]
    if s.get("table"):
        out += ["", s["table"].strip()]
    out += ["", *[f"- {n}" for n in s.get("notes", [])]] if s.get("notes") else []
    return out


def render_summary(summary: dict[str, Any]) -> str:
    """The window's ``summary.md``."""
    env = summary["environment"]
    lines = [f"# GPU window: {summary['device_name']}", ""]
    if not summary["on_gpu"] or summary["sizes"] != "full":
        lines += [
            f"**A rehearsal at {summary['sizes']} sizes"
            + ("" if summary["on_gpu"] else ", on the CPU")
            + "**: it shows the command runs end to end; its figures are not GPU figures.",
            "",
        ]
    lines += [
        f"Made by `{summary['command']}` on {summary['date']}, code at commit "
        f"{summary['commit']}, budget {summary['budget_s']:.0f} s, took "
        f"{summary['wall_s']:.0f} s.",
        "",
        f"torch {env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), opacus "
        f"{env.get('opacus')}, timm {env.get('timm')}, torchvision {env.get('torchvision')}, "
        f"python {env.get('python')}; {env.get('cpu')}; {env.get('platform')}.",
        "",
        "| stage | status | seconds | time box (s) |",
        "|---|---|---|---|",
    ]
    for s in summary["stages"]:
        lines.append(
            f"| {s['name']} | {s['status']} | {s.get('seconds', 0):.0f} | "
            f"{s.get('budget_s', 0):.0f} |"
        )
    for s in summary["stages"]:
        lines += _stage_lines(s)
    return "\n".join(lines) + "\n"


def device_slug(name: str) -> str:
    """A report folder's device part: ``NVIDIA H200`` -> ``h200``, else the name slugged."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", name)
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")).lower()


def _place(src: Path, dest: Path, force: bool) -> None:
    if dest.exists():
        if not force:
            raise UsageError(f"{dest}: already exists; --force replaces it")
        shutil.rmtree(dest)
    shutil.move(str(src), dest)


def unpack(
    files_dir: Path,
    reports: Path,
    *,
    perf_name: str | None = None,
    slice_name: str = SLICE_NAME,
    allow_cpu: bool = False,
    force: bool = False,
) -> list[Path]:
    """Put a window's returned files into ``reports/``: the perf page into ``perf_name``
    (default ``gpu_<device>``), the slice into ``slice_name``, each with the window's summary
    beside it as ``window.md`` (device, versions, commit, command, what each stage did not
    reach); the slice's leaderboard is rebuilt from its records by this checkout's code.

    Raises:
        UsageError: When the files are not a window's, are a CPU rehearsal and ``allow_cpu``
            is not set (CPU figures are never published as GPU ones), or a folder exists and
            ``force`` is not set.
    """
    try:
        summary = json.loads((files_dir / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{files_dir}: no readable summary.json of a GPU window ({err})") from None
    if not summary.get("on_gpu") and not allow_cpu:
        raise UsageError(
            f"{files_dir}: a CPU rehearsal ({summary.get('device_name')}), not GPU figures; "
            "--allow-cpu unpacks it anyway"
        )
    perf_name = perf_name or (
        f"gpu_{device_slug(summary['device_name'])}" if summary.get("on_gpu") else "cpu_rehearsal"
    )
    scratch = reports / f".unpack-{int(time.time())}"
    try:
        found = pack.extract(files_dir, scratch)
        placed = []
        for folder, name in (("gpu_report", perf_name), ("slice", slice_name)):
            if folder in found:
                _place(scratch / folder, reports / name, force)
                shutil.copyfile(files_dir / "summary.md", reports / name / "window.md")
                placed.append(reports / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    slice_dir = reports / slice_name
    if slice_dir in placed and (slice_dir / "records.jsonl").is_file():
        # reason: scipy and matplotlib, only where there is a leaderboard to rebuild
        from bench.results.leaderboard import write_report

        write_report(slice_dir)
    return placed
