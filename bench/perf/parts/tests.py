"""GPU-report part ``tests``: ``pytest -m gpu`` in a subprocess; counts, skips, failures."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

from bench.perf.parts.base import PartRun
from bench.provenance import REPO

TITLE = "CUDA tests (`pytest -m gpu`)"

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def measure(run: PartRun) -> None:
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


def render(data: dict[str, Any]) -> list[str]:
    """The command, its summary line, then its failures and skips verbatim."""
    out = [f"`{data.get('command', '')}`", "", f"Result: **{data.get('summary') or 'none'}**"]
    if data.get("failed"):
        out += ["", "Failures:", "", "```", *data["failed"], "```"]
    if data.get("skipped"):
        out += ["", "Skips:", "", "```", *data["skipped"], "```"]
    return out
