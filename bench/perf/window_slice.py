"""The GPU window's CIFAR-10 slice: the quick suite's every norm x 1 seed, sized to fit its time.

The slice is the normal suite runner (``python -m bench run``) on
``suites/cifar10_eps8_quick.yaml`` with ``--set`` overrides: one seed, a step count sized from
the gpu-report's measured book-keeping step times, no checkpoints, and the data the window was
given (the CIFAR-10 JPEG copy; generated data at tiny sizes when there is none). Its runs are
genuinely DP at the suite's target (the noise is calibrated for the shortened run).
"""

from __future__ import annotations

import json
import math
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.provenance import REPO
from bench.results.records import read_records

SUITE = REPO / "suites" / "cifar10_eps8_quick.yaml"
#: The slice's suite name: its records are not the quick suite's (fewer steps, one seed).
NAME = "cifar10_eps8_quick_slice"
#: Seconds a stage's process has, after SIGINT at its deadline, to write what it has.
STOP_GRACE_S = 20.0
#: What the JPEG copy of CIFAR-10 is called wherever a number from it is reported.
JPEG_NAME = "CIFAR-10 (JPEG q75 copy)"


@dataclass(frozen=True)
class SliceSizes:
    """How the slice is sized at one of the gpu-report's sizes.

    Attributes:
        overrides: ``--set`` values besides steps, seed and data (tiny: a small model and batch).
        synthetic: ``--set`` values of the generated data used when no CIFAR-10 is given (tiny
            only; None: the slice needs CIFAR-10).
        startup_s: Seconds the runner takes before its first cell (imports, data, CUDA).
        run_overhead_s: Seconds per run outside its DP steps (calibration, model, warm-up,
            evaluation); an estimate, reported as one.
        nonprivate_share: The non-private throughput measurement's steps per DP step (at most
            one: it times no more steps than the DP side).
        margin: Fraction of the slice's time the sized steps may fill.
        min_steps: Fewest steps a slice runs, even where the time is short.
        max_steps: Most steps (the suite's own count at full sizes).
    """

    overrides: tuple[str, ...]
    synthetic: tuple[str, ...] | None
    startup_s: float
    run_overhead_s: float
    nonprivate_share: float
    margin: float
    min_steps: int
    max_steps: int


SLICE_SIZES = {
    "full": SliceSizes((), None, 15.0, 10.0, 0.5, 0.8, 10, 300),
    "tiny": SliceSizes(
        (
            'grid.backbone=["wrn16_4[width=0.125]"]',
            "training.batch_size=16",
            "training.max_physical_batch=16",
            "training.eval_batch_size=64",
            "training.throughput_warmup_steps=1",
            "training.throughput_steps=1",
            "training.crop_padding=2",
        ),
        (
            "data.source=synthetic",
            "data.num_train=128",
            "data.num_test=32",
            "data.image_size=16",
        ),
        10.0,
        3.0,
        1.0,
        0.8,
        2,  # one warm-up step and one timed: a throughput
        3,
    ),
}


def prepare_data(tarball: Path, dest: Path) -> Path:
    """Extract the CIFAR-10 JPEG tarball into ``dest`` and decode it once into the imagefolder
    cache, so that the slice's runner starts from the cache; returns the imagefolder root."""
    with tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    root = dest if (dest / "train").is_dir() else next(p.parent for p in dest.rglob("train"))
    # reason: torch, only where there is data to decode
    from bench.config import DataConfig
    from bench.data.imagefolder import load_imagefolder

    load_imagefolder(DataConfig(source="imagefolder", root=str(root)))
    return root


def step_seconds(
    table: dict[str, Any], backbone: str, norms: Sequence[str], examples: int
) -> dict[str, dict[str, float] | None]:
    """Per norm, the seconds of one DP step and one non-private step of ``examples`` images,
    scaled linearly from the gpu-report table's book-keeping (``dp``) and ``nonprivate`` rows of
    ``backbone`` at its physical batch; None where the table has no such row."""
    batch = table.get("batch") or 0
    rows: dict[tuple[str, str], float] = {}
    for r in table.get("rows", []):
        if r.get("backbone") == backbone and "seconds" in r:
            rows[(r["norm"], r["kind"])] = r["seconds"]
    out: dict[str, dict[str, float] | None] = {}
    for spec in norms:
        base = spec.split("[", 1)[0]
        dp, plain = rows.get((base, "dp")), rows.get((base, "nonprivate"))
        out[spec] = (
            {"dp": dp * examples / batch, "nonprivate": (plain or 0.0) * examples / batch}
            if dp and batch
            else None
        )
    return out


def size_steps(
    per_norm: dict[str, dict[str, float] | None], seconds: float, sizes: SliceSizes
) -> tuple[int, list[str]]:
    """The steps every norm's run takes so that the slice fits ``seconds``, and notes saying how.

    A norm the table did not measure is charged the slowest measured norm's step; with nothing
    measured the slice runs `SliceSizes.min_steps`.
    """
    known = [m for m in per_norm.values() if m]
    notes = []
    if not known:
        return sizes.min_steps, [
            f"no step time was measured: {sizes.min_steps} steps, which the deadline may cut"
        ]
    slowest = max(known, key=lambda m: m["dp"])
    missing = [n for n, m in per_norm.items() if not m]
    if missing:
        notes.append(f"not in the table, charged the slowest norm's step: {', '.join(missing)}")
    per_step = sum(
        (m or slowest)["dp"] + sizes.nonprivate_share * (m or slowest)["nonprivate"]
        for m in per_norm.values()
    )
    room = seconds * sizes.margin - sizes.startup_s - len(per_norm) * sizes.run_overhead_s
    fit = math.floor(room / per_step) if per_step > 0 else sizes.max_steps
    steps = min(sizes.max_steps, max(sizes.min_steps, fit))
    notes.append(
        f"{steps} steps: {seconds:.0f} s x {sizes.margin} - {sizes.startup_s:.0f} s start - "
        f"{len(per_norm)} runs x {sizes.run_overhead_s:.0f} s (estimates) over "
        f"{per_step:.3f} s for one step of every norm (DP, plus {sizes.nonprivate_share} of a "
        f"non-private one) fits {fit}; clamped to [{sizes.min_steps}, {sizes.max_steps}]"
    )
    return steps, notes


def overrides(sizes: SliceSizes, steps: int, data_root: Path | None) -> list[str]:
    """The ``--set`` values of the slice; generated data where no CIFAR-10 root is given."""
    out = [f"name={NAME}", "grid.seed=[0]", f"training.steps={steps}"]
    out += ["training.checkpoint_every=null", "data.download=false", *sizes.overrides]
    if data_root is not None:
        out += ["data.source=imagefolder", f"data.root={data_root}", f'data.dataset="{JPEG_NAME}"']
    elif sizes.synthetic is not None:
        out += list(sizes.synthetic)
    return out


def _sigint_default() -> None:
    """In the stage's process before exec: SIGINT back to its default disposition.

    A process started with SIGINT ignored (a job a non-interactive shell sends to the
    background, as ``nohup ... &`` from a script does) passes the ignore on through exec, and a
    Python started that way installs no KeyboardInterrupt handler: the runner would then stop
    politely only inside its training loop (which installs its own handler) and the deadline's
    SIGINT would be lost anywhere else, leaving only the kill.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_until(cmd: list[str], log: Path, deadline: float) -> tuple[int | None, str | None]:
    """Run ``cmd`` (output appended to ``log``) until ``deadline``; there, SIGINT (the runner and
    the gpu-report then write what they have), and `STOP_GRACE_S` later a kill.

    Returns:
        The exit code (None when killed) and, when stopped at the deadline, how.
    """
    with log.open("a") as f:
        f.write("\n$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, preexec_fn=_sigint_default
        )
        try:
            return proc.wait(timeout=max(0.1, deadline - time.time())), None
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=STOP_GRACE_S), "stopped (SIGINT) at its deadline"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None, f"killed {STOP_GRACE_S:.0f} s after its deadline"


def run(sets: list[str], out_dir: Path, device: str, deadline: float, log: Path) -> dict[str, Any]:
    """The runner in a subprocess, stopped at ``deadline``; what it recorded, per norm."""
    cmd = [sys.executable, "-m", "bench", "run", str(SUITE.relative_to(REPO)), "--out"]
    cmd += [str(out_dir), "--device", device, "--workers", "1", "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    result: dict[str, Any] = {"command": "python -m bench " + shlex.join(cmd[3:])}
    result["returncode"], result["stopped"] = run_until(cmd, log, deadline)
    records = out_dir / "records.jsonl"
    read = read_records(records).records if records.is_file() else []
    fields = ("status", "error", "test_acc", "throughput_img_s", "epsilon_spent", "wall_s")
    result["runs"] = {str(r.get("norm")): {k: r.get(k) for k in fields} for r in read}
    return result


def write_leaderboard(out_dir: Path) -> str | None:
    """Rebuild the slice's leaderboard from its records (the runner's own is lost when it is
    killed); returns the error line where that fails."""
    if not (out_dir / "records.jsonl").is_file():
        return "no records"
    # reason: scipy and matplotlib, only once there are records to report
    from bench.results.leaderboard import write_report

    try:
        write_report(out_dir)
    except Exception as err:  # the records still travel; the leaderboard is rebuilt on unpack
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def dump(path: Path, value: Any) -> None:
    """``value`` as indented JSON (a helper for the window's stage files)."""
    path.write_text(json.dumps(value, indent=1))
