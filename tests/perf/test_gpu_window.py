"""The GPU window (tests, gpu-report, scaling, CIFAR-10 slice in one budget) is rehearsed end
to end on the CPU; its files fit what a device machine returns; its slice is sized from the
report; its scaling stage is planned over every visible GPU."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from bench import provenance
from bench.errors import UsageError
from bench.perf import gpu_report, pack, window_scaling, window_slice
from bench.perf.__main__ import _parser as perf_parser
from bench.perf.__main__ import main
from bench.perf.parts import PARTS, table
from bench.perf.parts.base import TINY
from bench.perf.window_summary import device_slug
from bench.provenance import REPO
from bench.suite import load_suite
from bench.train.ranks import busiest_share

SMALL = pack.Limits(max_files=8, max_file_bytes=4096, max_total_bytes=64 * 4096)


def noise(path: Path, n: int) -> Path:
    """``n`` incompressible bytes at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(n).randbytes(n))
    return path


def test_a_tarball_over_the_size_limit_is_split_and_joined_back(tmp_path):
    report = tmp_path / "work" / "report"
    noise(report / "README.md", 3000)
    noise(report / "sub" / "data.bin", 9000)
    noise(report / "checkpoints" / "abc" / "checkpoint.pt", 5000)
    noise(report / ".records.jsonl.lock", 10)
    log = noise(tmp_path / "work" / "gpu_window.log", 10_000)
    out = tmp_path / "out"
    written = pack.pack(out, {"report": report}, [log], SMALL)
    names = [p.name for p in written]
    assert names[:3] == [f"{pack.TARBALL}.00", f"{pack.TARBALL}.01", f"{pack.TARBALL}.02"]
    assert pack.problems(out, SMALL) == []
    assert all(p.stat().st_size <= SMALL.max_file_bytes for p in out.iterdir())
    # The log keeps its tail, with a note of what was cut.
    text = (out / "gpu_window.log").read_bytes()
    assert text.startswith(b"[... first") and text.endswith(log.read_bytes()[-100:])
    found = pack.extract(out, tmp_path / "back")
    assert found == ["report"]
    back = tmp_path / "back" / "report"
    assert (back / "sub" / "data.bin").read_bytes() == (report / "sub" / "data.bin").read_bytes()
    assert not (back / "checkpoints").exists()  # checkpoints never leave the device
    assert sorted(p.name for p in back.iterdir()) == ["README.md", "sub"]


def test_the_limit_checks_name_every_way_a_result_would_not_come_back(tmp_path):
    out = tmp_path / "out"
    for i in range(9):
        noise(out / f"f{i}.txt", 10)
    noise(out / "a" / "b" / "c" / "deep.txt", 10)
    noise(out / "bad name!.txt", 10)
    noise(out / "big.bin", SMALL.max_file_bytes + 1)
    found = "\n".join(pack.problems(out, SMALL))
    assert "12 files, more than 8" in found
    assert "3 folders deep" in found
    assert "bad name!.txt: name has characters" in found
    assert f"big.bin: {SMALL.max_file_bytes + 1} bytes" in found
    assert pack.problems(out / "a" / "b" / "c", SMALL) == []


def test_packing_that_cannot_fit_is_a_usage_error(tmp_path):
    loose = [noise(tmp_path / f"f{i}.md", 10) for i in range(3)]
    limits = pack.Limits(max_files=2)
    with pytest.raises(UsageError, match="4 files, more than 2"):
        pack.pack(tmp_path / "out", {}, loose, limits)


TABLE = {
    "batch": 512,
    "rows": [
        {"backbone": "wrn16_4", "norm": "group_norm", "kind": "dp", "seconds": 0.5},
        {"backbone": "wrn16_4", "norm": "group_norm", "kind": "nonprivate", "seconds": 0.1},
        {"backbone": "wrn16_4", "norm": "kernel_norm", "kind": "dp", "seconds": 1.0},
        {"backbone": "wrn16_4", "norm": "kernel_norm", "kind": "nonprivate", "seconds": 0.2},
        {"backbone": "resnet9", "norm": "layer_norm", "kind": "dp", "seconds": 0.01},
        {"backbone": "wrn16_4", "norm": "layer_norm", "kind": "dp", "error": "OOM"},
    ],
}


def test_the_slice_is_sized_from_the_measured_step_times():
    norms = ["group_norm", "kernel_norm", "layer_norm"]
    per_norm = window_slice.step_seconds(TABLE, "wrn16_4", norms, 1024)
    assert per_norm["group_norm"] == {"dp": 1.0, "nonprivate": 0.2}
    assert per_norm["kernel_norm"] == {"dp": 2.0, "nonprivate": 0.4}
    assert per_norm["layer_norm"] is None  # only an error (and another backbone's row)
    sizes = window_slice.SliceSizes((), None, 30.0, 20.0, 0.5, 0.8, 10, 300)
    # 400 s x 0.8 - 30 - 3 x 20 = 230 s over (1.1 + 2.2 + 2.2) s a step of all three: 41.
    steps, notes = window_slice.size_steps(per_norm, 400.0, sizes)
    assert steps == 41
    assert "charged the slowest norm's step: layer_norm" in notes[0]
    assert window_slice.size_steps(per_norm, 1e6, sizes)[0] == 300
    assert window_slice.size_steps(per_norm, 10.0, sizes)[0] == 10
    assert window_slice.size_steps(dict.fromkeys(norms), 400.0, sizes)[0] == 10


def test_the_slice_reads_the_cifar10_copy_by_its_name_or_generated_data_at_tiny_sizes():
    full = window_slice.overrides(window_slice.SLICE_SIZES["full"], 120, Path("/d/cifar"))
    assert "training.steps=120" in full and "grid.seed=[0]" in full
    assert "data.root=/d/cifar" in full and f'data.dataset="{window_slice.JPEG_NAME}"' in full
    assert f"name={window_slice.NAME}" in full
    assert not any(s.startswith("grid.backbone") for s in full)  # the suite's own model
    tiny = window_slice.overrides(window_slice.SLICE_SIZES["tiny"], 2, None)
    assert "data.source=synthetic" in tiny
    assert window_slice.SLICE_SIZES["full"].synthetic is None  # never generated data on a GPU


def test_device_names_give_report_folders():
    assert device_slug("NVIDIA H200") == "h200"
    assert device_slug("NVIDIA H100 80GB HBM3") == "h100"
    assert device_slug("NVIDIA A100-SXM4-40GB") == "a100"


def jpeg_tarball(path: Path) -> Path:
    """A CIFAR-like imagefolder tarball: 2 classes, 40 + 8 images of 16x16."""
    from PIL import Image  # reason: only this helper draws images

    root = path.parent / "images"
    for split, n in (("train", 20), ("test", 4)):
        for c, name in enumerate(("airplane", "bird")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (16, 16), (40 * c + i, 100, 200 - i)).save(folder / f"{i}.jpg")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    return path


@pytest.mark.slow
def test_the_whole_window_runs_on_the_cpu_and_unpacks_into_reports(tmp_path, monkeypatch):
    """The device's own command, `scripts/gpu_window.sh`, from a folder holding what a device
    call carries (`.data/`: the tarball and the commit; no `.whl/` here)."""
    carried = tmp_path / "carried"
    jpeg_tarball(carried / ".data" / "cifar10-jpeg.tar.gz")
    (carried / ".data" / "COMMIT").write_text("abc123def456\n")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "HOME": str(tmp_path / "home"),  # the imagefolder cache goes to ~/.cache
        # One thread a process: on 2 shared cores, torch's threads only wait for each other.
        "OMP_NUM_THREADS": "1",
    }
    budget = os.environ.get("GPU_WINDOW_TEST_BUDGET_S", "150")  # more on a crowded machine
    cmd = ["bash", str(REPO / "scripts" / "gpu_window.sh"), budget, "--work", str(work)]
    limit = 2 * float(budget) + 120
    proc = subprocess.run(cmd, cwd=carried, env=env, capture_output=True, text=True, timeout=limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_window.log",
        pack.TARBALL,
        "summary.json",
        "summary.md",
    ]
    assert pack.problems(out) == []
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["name"]: s for s in summary["stages"]}
    assert list(stages) == ["tests", "report", "scaling", "slice"]
    assert stages["scaling"]["status"] == "skipped"  # on the CPU: no GPUs to scale over
    assert summary["on_gpu"] is False and "--commit abc123def456" in summary["command"]
    assert stages["slice"]["status"] == "ok", stages["slice"]
    assert stages["slice"]["steps"] >= 2 and "table" in stages["report"]["parts"]
    # Every CUDA test collected, and skipped for its reason; every other part of the gpu-report
    # measured or stopped at its time box, none failed (this is the gpu-report's end-to-end test).
    assert stages["tests"]["counts"].get("skipped", 0) > 0, stages["tests"]
    assert "failed" not in stages["tests"]["counts"]
    assert set(stages["report"]["parts"]) == set(PARTS) - {"tests"}
    assert set(stages["report"]["parts"].values()) <= {"ok", "time box"}, stages["report"]
    text = (out / "summary.md").read_text()
    assert "**A rehearsal at tiny sizes, on the CPU**" in text

    reports = tmp_path / "reports"
    assert main(["gpu-window-unpack", str(out), "--reports", str(reports)]) == 2
    assert main(["gpu-window-unpack", str(out), "--reports", str(reports), "--allow-cpu"]) == 0
    perf, slice_dir = reports / "cpu_rehearsal", reports / window_slice.NAME
    page = (perf / "README.md").read_text()
    assert "**These are CPU figures**" in page
    assert "## 1. CUDA tests" in page and "-m gpu tests/test_gpu.py -x" in page
    for i, (title, _measure, _render) in enumerate(PARTS.values(), start=1):
        assert f"## {i}. {title}" in page
    assert "Opacus ghost / book-keeping" in page and "no CUDA device" in page
    assert (perf / "environment.txt").exists() and (perf / "constraints.txt").exists()
    records = [json.loads(x) for x in (slice_dir / "records.jsonl").read_text().splitlines()]
    # Every norm ran; a cell may fail as a result (DP BatchNorm's noisy statistics of 40
    # images can diverge), recorded with its reason.
    assert len(records) == 5 and {r["status"] for r in records} <= {"ok", "failed"}
    assert all(r["error"] for r in records if r["status"] == "failed")
    assert next(r for r in records if r["norm"] == "group_norm")["status"] == "ok"
    assert {r["suite"] for r in records} == {window_slice.NAME}
    assert {r["steps"] for r in records if r["status"] == "ok"} == {stages["slice"]["steps"]}
    assert {r["dataset"] for r in records} == {window_slice.JPEG_NAME}
    assert {r["n_private"] for r in records if r["status"] == "ok"} == {40}  # its images
    assert (slice_dir / "leaderboard.md").is_file() and (slice_dir / "window.md").is_file()
    assert not (slice_dir / "checkpoints").exists()


def test_without_a_repository_the_commit_is_the_one_the_window_was_given(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)  # a copied work tree: no .git
    monkeypatch.delenv(provenance.COMMIT_ENV, raising=False)
    assert provenance.git_commit() is None
    monkeypatch.setenv(provenance.COMMIT_ENV, "abc123def456")
    assert provenance.git_commit() == "abc123def456"


def test_a_stage_past_its_deadline_gets_sigint_then_a_kill(tmp_path, monkeypatch):
    # A generous grace for the polite stage (it exits at once; a loaded machine may take
    # seconds to schedule it), a short one for the deaf stage (the test waits all of it).
    monkeypatch.setattr(window_slice, "STOP_GRACE_S", 20.0)
    log = tmp_path / "log"
    # The polite stage is Python, as the real stages are: a shell started with SIGINT ignored
    # (a job sent to the background by a non-interactive shell, as CI may be) cannot trap it,
    # while Python installs its handler over an inherited SIG_IGN.
    script = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('wrote what I had', flush=True)\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "time.sleep(30)\n"
    )
    polite = [sys.executable, "-c", script]
    code, how = window_slice.run_until(polite, log, time.time() + 3.0)
    assert (code, how) == (7, "stopped (SIGINT) at its deadline")
    assert "wrote what I had" in log.read_text()
    monkeypatch.setattr(window_slice, "STOP_GRACE_S", 2.0)
    deaf = ["bash", "-c", "trap '' INT; exec sleep 30"]
    assert window_slice.run_until(deaf, log, time.time() + 0.5) == (
        None,
        "killed 2 s after its deadline",
    )
    assert window_slice.run_until(["true", "x", "y"], log, time.time() + 30) == (0, None)


def test_a_stage_gets_the_deadline_sigint_even_when_its_caller_ignores_sigint(tmp_path):
    # gpu-window launched as a background job of a script inherits SIGINT ignored; its stages
    # must not: a Python stage relying on the default KeyboardInterrupt still stops politely.
    script = (
        "import sys, time\ntry:\n    time.sleep(30)\nexcept KeyboardInterrupt:\n    sys.exit(7)\n"
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        got = window_slice.run_until(
            [sys.executable, "-c", script], tmp_path / "log", time.time() + 3.0
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    assert got == (7, "stopped (SIGINT) at its deadline")


def test_a_report_stopped_by_sigint_keeps_its_measurements_and_lists_the_rest(
    tmp_path, monkeypatch
):
    def measured_then_stopped(run):
        run.data["rows"] = [{"backbone": "b", "norm": "n", "kind": "dp", "seconds": 0.1}]
        run.measured()
        raise KeyboardInterrupt

    monkeypatch.setitem(PARTS, "table", (PARTS["table"][0], measured_then_stopped, table.render))
    path, results = gpu_report.write_report(
        tmp_path,
        sizes=TINY,
        device=torch.device("cpu"),
        parts=["table", "bf16", "recipe"],
        isolate=False,
        command="test",
        prior=[{"name": "tests", "status": "ok", "data": {"summary": "3 passed"}, "notes": []}],
    )
    assert [(r["name"], r["status"]) for r in results] == [
        ("tests", "ok"),
        ("table", "killed"),
        ("bf16", "not reached"),
        ("recipe", "not reached"),
    ]
    assert results[1]["data"]["rows"][0]["seconds"] == 0.1
    text = path.read_text()
    assert "## 1. CUDA tests" in text and "3 passed" in text
    assert "not reached: stopped by SIGINT" in text


def test_unusable_flags_and_folders_are_one_line_errors(tmp_path, capsys):
    assert main(["gpu-window", "--out", str(tmp_path / "o"), "--budget-s", "0"]) == 2
    assert "--budget-s: must be positive (given: 0.0)" in capsys.readouterr().err
    missing = str(tmp_path / "no.tar.gz")
    assert main(["gpu-window", "--out", str(tmp_path / "o"), "--cifar-tar", missing]) == 2
    assert f"--cifar-tar: no such file (given: {missing})" in capsys.readouterr().err
    assert main(["gpu-window-unpack", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no readable summary.json of a GPU window" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_scaling_stage_plans_every_gpu_in_whole_physical_batches(tmp_path):
    """With four GPUs: 1 vs 4 NCCL processes on a cell whose batch is four physical batches
    (so no GPU idles); the command parses and its cell is the one planned. Nothing runs."""
    plan = window_scaling.scaling_plan(torch.device("cuda"), 4, tmp_path / "scaling.md")
    assert plan["run"] and plan["nprocs"] == [1, 4]
    cmd = plan["command"]
    assert cmd[:4] == [sys.executable, "-m", "bench.perf", "scaling"]
    args = perf_parser().parse_args(cmd[3:])
    assert (args.nproc, args.device, args.out) == ("1,4", "cuda", tmp_path / "scaling.md")
    cell = load_suite(args.suite, args.set).cells()[0]  # the one the scaling command times
    assert (cell.training.batch_size, cell.training.max_physical_batch) == (1024, 256)
    assert busiest_share(1024, cell.training.max_physical_batch, 4) == 0.25
    assert cell.data.source == "synthetic"  # the stage needs no data set


@pytest.mark.parametrize(("device", "gpus"), [("cuda", 1), ("cpu", 0)], ids=["one-gpu", "cpu"])
def test_the_scaling_stage_is_skipped_below_two_gpus_saying_why(
    device, gpus, tmp_path, monkeypatch
):
    plan = window_scaling.scaling_plan(torch.device(device), gpus, tmp_path / "s.md")
    assert not plan["run"] and "needs at least 2" in plan["reason"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    stage = window_scaling.stage_scaling(
        torch.device(device), tmp_path / "s.md", tmp_path / "log", 60.0, time.time() + 60
    )
    assert stage["status"] == "skipped" and "needs at least 2" in stage["notes"][0]


def test_the_scaling_stage_runs_its_plan_and_keeps_the_table(tmp_path, monkeypatch):
    ran = []

    def run_until(cmd, log, deadline):
        ran.append(cmd)
        Path(cmd[cmd.index("--out") + 1]).write_text("| processes | ... |\n")
        return 0, None

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(window_slice, "run_until", run_until)
    out = tmp_path / "gpu_report" / "scaling.md"
    stage = window_scaling.stage_scaling(
        torch.device("cuda"), out, tmp_path / "log", 60.0, time.time() + 60
    )
    assert stage["status"] == "ok" and stage["table"].startswith("| processes")
    assert ran and ran[0][ran[0].index("--nproc") + 1] == "1,2"
    assert "--nproc 1,2" in stage["command"]
