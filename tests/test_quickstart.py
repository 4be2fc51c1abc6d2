"""The first hour of a new user: the default output folder, the cost said before it is spent,
data checked before the first cell, an all-recorded run that says how to re-run, and Ctrl-C
stopping within seconds with the current step's checkpoint saved."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import torchvision.datasets.cifar
import yaml

import bench.sweep.cost
from bench import checkpoint
from bench.cli import main
from bench.config import DataConfig
from bench.data import check_data
from bench.errors import DataError
from bench.perf.tables import device_with_model
from bench.provenance import cpu_model
from bench.suite import load_suite
from bench.sweep.cell import record_interrupted
from bench.sweep.cost import SweepCost, cells_to_run, estimate
from bench.sweep.options import RunOptions, SlurmOptions
from bench.sweep.outputs import default_out_dir
from bench.sweep.protocol import tune_cells
from tests.tiny_suite import ROOT, TINY


def _suite_file(tmp_path: Path, **changes: dict) -> Path:
    raw = yaml.safe_load(TINY)
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_plain_run_writes_into_the_git_ignored_runs_folder_not_reports(tiny):
    out = default_out_dir(load_suite(tiny))
    assert out == ROOT / "runs" / "tiny"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(out / "records.jsonl")], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


def test_the_quick_start_into_an_empty_folder_trains_then_a_rerun_says_how_to_train_again(
    tiny, tmp_path, capsys
):
    out = tmp_path / "empty"
    args = ["run", str(tiny), "--out", str(out), "--no-progress", "--set", "grid.seed=[0]"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "2 of 2 cells run (2 ok" in first.out
    assert "pre-flight: device: cpu" in first.err
    assert "pre-flight: cells to run: 2; already recorded: 0" in first.err
    assert (out / "leaderboard.md").exists()
    assert main(args) == 0
    again = capsys.readouterr().err
    assert "every cell is already recorded" in again
    assert "--force" in again and "another --out" in again


def test_dry_run_says_device_cells_that_will_run_and_time_for_a_tuned_suite(tmp_path, capsys):
    """A tuned suite lists every candidate's final cell, but only one per grid cell runs."""
    suite = _suite_file(
        tmp_path,
        data={"val_split": 32},
        tune={
            "keys": {"training.lr": [0.5, 1.0, 2.0]},
            "seeds": [0],
            "overrides": {"training.steps": 2},
        },
    )
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    # 2 norms x (3 coarse + 2 refined candidates) x 1 tuning seed, then 2 norms x 3 seeds final
    # cells.
    assert "cells to run: 16 (10 tuning, 6 final); already recorded: 0" in text
    assert re.search(r"estimated time on this device: .* per cell, .* in all \(measured", text)
    assert "device: cpu" in text
    # Any coarse optimum's refinement: 0.3536, 0.7071, 1.414, 2.828 join the 3 coarse rates, so
    # 2 norms x 7 rates tuning cells + 2 norms x 3 seeds x 7 rates final cells.
    assert "lists all 56 cells" in text


def test_cells_to_run_counts_the_selected_finals_once_tuning_is_recorded(tmp_path):
    path = _suite_file(
        tmp_path,
        data={"val_split": 32},
        tune={"keys": {"training.lr": [0.5, 1.0]}, "seeds": [0], "overrides": {}, "refine": False},
    )
    suite = load_suite(path)
    records = tmp_path / "records.jsonl"
    tunes = tune_cells(suite)
    lines = [
        {
            "run_key": c.run_key,
            "status": "ok",
            "val_acc": 0.9 if c.tuned["training.lr"] == 1.0 else 0.1,
        }
        for c in tunes
    ]
    records.write_text("".join(json.dumps(line) + "\n" for line in lines))
    todo, tuning, recorded = cells_to_run(suite, records)
    assert (len(todo), tuning, recorded) == (6, 0, 4)
    assert {c.stage for c in todo} == {"final"}
    assert {c.training.lr for c in todo} == {1.0}  # the selection, not the first candidate


def test_a_suite_estimated_above_12_hours_asks_for_yes_in_one_line(
    tiny, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "o"
    # A measured step of an hour: 3 steps x 6 cells is well above 12 h.
    monkeypatch.setattr(bench.sweep.cost, "step_seconds", lambda cell, device: 3600.0)
    code = main(["run", str(tiny), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: this sweep is estimated at") and "add --yes" in last
    assert not out.exists()


def test_the_estimate_scales_the_measured_step_by_steps_and_sums_the_cells(tiny, monkeypatch):
    monkeypatch.setattr(bench.sweep.cost, "step_seconds", lambda cell, device: 2.0)
    cost = estimate(load_suite(tiny), Path("/nonexistent/records.jsonl"))
    assert isinstance(cost, SweepCost) and cost.to_run == 6
    # 3 steps x 2 s, + 64 test images x 2 s / 64 images / 3, + (1 + 1) non-private steps x 1 s.
    assert cost.cell_s == (6.0 + 2 / 3 + 2.0,) * 6
    assert abs(cost.total_s - 6 * (8 + 2 / 3)) < 1e-9


def test_an_estimate_measured_on_a_busy_cpu_says_so(tiny, monkeypatch):
    """Other work slows the measured step: the estimate says how busy the cores were, and
    says nothing when only this process was running."""
    monkeypatch.setattr(bench.sweep.cost, "step_seconds", lambda cell, device: 2.0)
    monkeypatch.setattr(bench.sweep.cost.os, "cpu_count", lambda: 2)
    said = {}
    for load in (1.2, 3.5):
        monkeypatch.setattr(bench.sweep.cost.os, "getloadavg", lambda load=load: (load, 0, 0))
        lines = estimate(load_suite(tiny), Path("/nonexistent/records.jsonl")).lines()
        said[load] = [line for line in lines if "busy" in line]
    assert said[1.2] == []
    assert said[3.5] == [
        "the CPU was busy with other work when the step was measured (load average 3.5 on 2 "
        "cores, this process included): the estimate holds while it stays that busy, and is "
        "longer than the same sweep on an idle machine"
    ]


def test_the_estimate_counts_the_cells_and_processes_the_options_give(tiny, tmp_path, monkeypatch):
    """``--retry-failed`` re-runs failed cells and ``--nproc`` / the SLURM job's tasks /
    torchrun's world spread each cell: the estimate (and so ``--dry-run``) takes both from the
    sweep's options."""
    monkeypatch.setattr(bench.sweep.cost, "step_seconds", lambda cell, device: 2.0)
    suite, records = load_suite(tiny), tmp_path / "records.jsonl"
    for cell in suite.cells():
        record_interrupted(cell, records, "diverged", status="failed")
    assert estimate(suite, records).to_run == 0
    retried = estimate(suite, records, options=RunOptions(retry_failed=True))
    assert (retried.to_run, retried.nproc) == (6, 1)
    two = estimate(suite, records, options=RunOptions(retry_failed=True, nproc=2))
    assert two.nproc == 2 and two.cell_s[0] < retried.cell_s[0]
    jobs = RunOptions(force=True, executor="slurm", slurm=SlurmOptions(nodes=2, tasks_per_node=2))
    assert estimate(suite, records, options=jobs).nproc == 4
    # Under torchrun every rank runs `bench run` and each cell runs on the launched world (the
    # estimate reads `cell_processes`, as for the SLURM job above).
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert RunOptions().cell_processes == 3 and RunOptions(nproc=2).cell_processes == 2


def test_missing_cifar10_is_one_line_exit_2_before_anything_runs(tmp_path, capsys):
    root = tmp_path / "no-cifar"
    root.mkdir()  # there, but empty: the loader accepts the folder, the data is not in it
    suite = _suite_file(tmp_path, data={"source": "cifar10", "root": str(root), "download": False})
    out = tmp_path / "o"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {root}: CIFAR-10 is not there")
    assert "set data.download: true" in err
    assert not out.exists()


def test_the_missing_data_hint_does_not_ask_for_a_download_already_asked_for(tmp_path, monkeypatch):
    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    cfg = DataConfig(source="cifar10", root=str(tmp_path / "x"), download=True)
    with pytest.raises(DataError) as err:
        check_data(cfg)
    assert "data.download is true" in str(err.value)
    assert "set data.download" not in str(err.value)


def _wait_for(
    proc: subprocess.Popen, stream_text: list[str], pattern: str, timeout: float
) -> re.Match | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(pattern, "".join(stream_text))
        if found:
            return found
        time.sleep(0.1)
    return None


def test_ctrl_c_stops_within_seconds_and_saves_the_current_steps_checkpoint(tmp_path):
    suite = _suite_file(
        tmp_path,
        training={"steps": 100_000, "checkpoint_every": 1_000_000},
        grid={"norm": ["group_norm"], "seed": [0]},
    )
    out = tmp_path / "o"
    # One thread: on a machine shared with other work, two spinning threads slow a step 10x.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", "run", str(suite), "--out", str(out), "--yes"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")))
    reader.start()
    try:
        seen = _wait_for(proc, err, r"\| step (\d+)/100000", timeout=400)
        assert seen, "".join(err)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
        reader.join(timeout=10)
    assert code == 130, "".join(err)
    assert took < 15, f"took {took:.1f} s to stop:\n" + "".join(err)[-3000:]
    cell = load_suite(suite).cells()[0]
    saved = checkpoint.load(
        checkpoint.checkpoint_path(out / "checkpoints", cell.run_key), cell.checkpoint_hash
    )
    assert saved.state is not None, saved.reason
    assert int(saved.state["step"]) >= int(seen.group(1))
    assert (
        not (out / "records.jsonl").exists()
        or cell.run_key not in (out / "records.jsonl").read_text()
    )


def test_the_perf_table_names_the_cpu_model_beside_the_device():
    line = device_with_model("cpu x86_64 (2 threads)")
    assert line == f"cpu x86_64 (2 threads), CPU model {cpu_model()}"
    assert device_with_model("NVIDIA H100 80GB HBM3") == "NVIDIA H100 80GB HBM3"
