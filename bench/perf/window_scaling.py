"""The GPU window's scaling stage: one cell on 1 and N GPUs (NCCL) where N > 1 are visible.

The stage runs ``python -m bench.perf scaling`` (`bench.perf.scaling`) in a subprocess, time
boxed, on the quick suite's first cell with generated CIFAR-sized data (the stage needs no
data set), its first norm and one seed, a few timed steps, and physical batches of ``batch / N``: a
rank's share is whole physical batches (`bench.train.ranks`), so with the suite's own 512 of
1024 more than two GPUs would leave some idle. Both rows run that same cell, so the speed-up
compares like with like. With one GPU (or none) the stage is skipped, saying why.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from bench.perf import window_slice

#: The stage's share of the window's budget after packing, when it runs (taken from the slice).
SHARE = 0.15
#: The cell (besides its physical batch, sized from N): generated data, the first norm, one
#: seed, a short run with timed steps (the scaling command turns the non-private reference off).
OVERRIDES = (
    "data.source=synthetic",
    "data.num_train=10000",
    "data.num_test=1000",
    "data.image_size=32",
    "grid.seed=[0]",
    "training.steps=12",
    "training.throughput_warmup_steps=2",
    "training.throughput_steps=10",
    "training.ema=null",
)


def scaling_plan(device: torch.device, gpus: int, out: Path) -> dict[str, Any]:
    """What the stage does on ``device`` with ``gpus`` visible: ``{"run": False, "reason"}``,
    or ``{"run": True, "command", "nprocs"}``, the command writing the table to ``out``."""
    if device.type != "cuda":
        reason = (
            f"on {device.type}, not a GPU: scaling over GPUs needs at least 2 (the CPU's is "
            "`python -m bench.perf scaling --device cpu`, reports/perf_cpu_scaling.md)"
        )
        return {"run": False, "reason": reason}
    if gpus < 2:
        reason = f"{gpus} GPU visible: scaling over GPUs (1 vs N processes, NCCL) needs at least 2"
        return {"run": False, "reason": reason}
    batch = 1024  # the quick suite's
    sets = [*OVERRIDES, f"training.batch_size={batch}"]
    sets.append(f"training.max_physical_batch={max(1, batch // gpus)}")
    cmd = [sys.executable, "-m", "bench.perf", "scaling", str(window_slice.SUITE)]
    cmd += ["--nproc", f"1,{gpus}", "--device", "cuda", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return {"run": True, "command": cmd, "nprocs": [1, gpus]}


def stage_scaling(
    device: torch.device, out: Path, log: Path, budget_s: float, deadline: float
) -> dict[str, Any]:
    """Run the plan for this machine until ``deadline``: the stage's report, with the table
    (also left in ``out``) where it ran."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    plan = scaling_plan(device, gpus, out)
    stage: dict[str, Any] = {"name": "scaling", "budget_s": budget_s if plan["run"] else 0.0}
    if not plan["run"]:
        stage.update(status="skipped", notes=[plan["reason"]])
        return stage
    cmd = plan["command"]
    stage.update(command="python " + shlex.join(cmd[1:]), notes=[])
    out.parent.mkdir(parents=True, exist_ok=True)
    code, stopped = window_slice.run_until(cmd, log, deadline)
    if stopped:
        stage.update(status="killed" if code is None else "time box", error=stopped)
    elif code != 0:
        stage.update(status="failed", error=f"the scaling command exited with {code}")
    else:
        stage["status"] = "ok"
    if out.is_file():
        stage["table"] = out.read_text()
    return stage
