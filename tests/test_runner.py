"""The runner: one record per cell, resumable after SIGKILL, failures recorded, clean stops."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import bench.plan
import bench.sweep.local
import bench.sweep.resume
import bench.train.cell
from bench.cli import _run_options, build_parser, main
from bench.results.records import read_records
from bench.suite import load_suite
from bench.sweep.options import RunOptions, SlurmOptions
from bench.sweep.resume import pending_cells
from bench.sweep.run import run_suite
from tests.tiny_suite import ROOT, TINY


def keys_in_file(path: Path) -> list[str]:
    return [json.loads(line)["run_key"] for line in path.read_text().splitlines()]


def test_every_cell_gets_one_ok_record_that_spends_the_target_epsilon(tiny, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(tiny), "--out", str(out), "--no-progress"]) == 0
    read = read_records(out / "records.jsonl")
    assert read.problems == []
    assert sorted(r["run_key"] for r in read.records) == sorted(
        c.run_key for c in load_suite(tiny).cells()
    )
    for r in read.records:
        assert r["status"] == "ok"
        assert 0.97 * r["epsilon_target"] <= r["epsilon_spent"] <= r["epsilon_target"]
        assert r["steps_done"] == r["steps"] == 3
        assert 0 <= r["test_acc"] <= 1 and r["throughput_img_s"] > 0
        assert r["provenance"]["torch"] and r["grad_sample_paths"]
        assert r["provenance"]["platform"] == platform.platform()
    assert (out / "leaderboard.md").exists() and (out / "suite.json").exists()


@pytest.mark.parametrize("mode", ["bk", "hooks", "functorch"])
def test_every_grad_sample_mode_trains_with_views_and_spends_the_target(mode, tiny, tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        str(tiny),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "grid.seed=[0]",
        "--set",
        "grid.norm=[group_norm]",
        "--set",
        f"training.grad_sample_mode={mode}",
        "--set",
        "training.augmult=2",
    ]
    assert main(args) == 0
    (record,) = read_records(out / "records.jsonl").records
    assert record["status"] == "ok", record.get("error")
    assert record["grad_sample_mode"] == mode and record["augmult"] == 2
    assert 0.97 * 8 <= record["epsilon_spent"] <= 8
    expected = {"bk": "bk", "hooks": "opacus", "functorch": "functorch"}[mode]
    assert set(record["grad_sample_paths"].values()) == {expected}


def test_report_rebuilds_the_leaderboard_of_a_run_byte_for_byte(tiny, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["run", str(tiny), "--out", str(out), "--no-progress", "--set", "grid.seed=[0,1]"])
        == 0
    )
    written = (out / "leaderboard.md").read_bytes()
    (out / "leaderboard.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "leaderboard.md").read_bytes() == written
    assert (out / "accuracy.png").exists() and (out / "accuracy_vs_throughput.png").exists()


def test_sigkill_mid_sweep_then_rerun_completes_without_redoing_or_corrupting(tiny, tmp_path):
    out = tmp_path / "out"
    records = out / "records.jsonl"
    cmd = [sys.executable, "-m", "bench", "run", str(tiny), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = records.read_text().splitlines()
    assert 2 <= len(before) < 6, "the kill must land mid-sweep"
    assert main(["run", str(tiny), "--out", str(out), "--no-progress"]) == 0
    after = records.read_text().splitlines()
    assert after[: len(before)] == before  # finished runs were neither redone nor rewritten
    keys = keys_in_file(records)
    assert len(keys) == len(set(keys)) == 6
    assert read_records(records).problems == []


def test_a_diverging_run_is_recorded_failed_and_the_sweep_goes_on(tiny, tmp_path):
    out = tmp_path / "out"
    args = [
        "run",
        str(tiny),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "grid.training.max_loss=[1.0e-6, 1.0e4]",
        "--set",
        "training.divergence_check=private_loss",
        "--set",
        "grid.seed=[0]",
    ]
    assert main(args) == 0
    records = read_records(out / "records.jsonl").records
    assert len(records) == 4
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and all("diverged" in r["error"] for r in failed)
    assert all(r["status"] == "ok" for r in records if r not in failed)
    assert "diverged" in (out / "leaderboard.md").read_text()


def test_a_crash_is_recorded_with_its_reason_and_the_sweep_goes_on(tiny, tmp_path, monkeypatch):
    real = bench.train.cell.train_cell

    def crash_on_layer_norm(cell, device, **kwargs):
        if cell.norm == "layer_norm":
            raise RuntimeError("simulated CUDA error")
        return real(cell, device, **kwargs)

    monkeypatch.setattr(bench.train.cell, "train_cell", crash_on_layer_norm)
    summary = run_suite(
        load_suite(tiny, ["grid.seed=[0]"]), RunOptions(out_dir=tmp_path / "o", progress=False)
    )
    assert summary.statuses == {"failed": 1, "ok": 1}
    failed = [
        r for r in read_records(tmp_path / "o" / "records.jsonl").records if r["status"] == "failed"
    ]
    assert failed[0]["error"] == "RuntimeError: simulated CUDA error"


def test_ctrl_c_stops_cleanly_without_a_false_record(tiny, tmp_path, monkeypatch, capsys):
    real, calls = bench.train.cell.train_cell, []

    def interrupted_second(cell, device, **kwargs):
        calls.append(cell)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cell, device, **kwargs)

    monkeypatch.setattr(bench.train.cell, "train_cell", interrupted_second)
    out = tmp_path / "out"
    assert main(["run", str(tiny), "--out", str(out), "--no-progress"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert keys_in_file(out / "records.jsonl") == [calls[0].run_key]


def test_force_replaces_each_cells_record_and_keeps_the_old_one_superseded(tiny, tmp_path):
    out = tmp_path / "out"
    args = ["run", str(tiny), "--out", str(out), "--no-progress", "--set", "grid.seed=[0]"]
    assert main(args) == 0
    assert main(args) == 0  # nothing to do: resumed
    first = (out / "records.jsonl").read_text().splitlines()
    assert len(first) == 2
    assert main([*args, "--force"]) == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2 and not set(lines) & set(first)  # one record per cell: the re-run's
    assert sorted((out / "records.superseded.jsonl").read_text().splitlines()) == sorted(first)
    read = read_records(out / "records.jsonl")
    assert read.problems == [] and [json.loads(x) for x in lines] == read.records
    board = (out / "leaderboard.md").read_text()
    assert "**Records:** 2 (2 ok, 0 failed" in board and "(n=2" not in board  # counted once


def test_dry_run_prints_the_noise_of_each_accountant_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "sigma (prv)" in text and "sigma (rdp)" in text
    assert text.count("resnet9[width=0.125]") == 6
    assert not out.exists()


BAD = {
    "unknown key": (("training", "stepz"), 3, "training.stepz"),
    "unknown norm": (("grid", "norm"), ["gruop_norm"], "did you mean 'group_norm'"),
    "epsilon <= 0": (("privacy", "epsilon"), 0, "privacy.epsilon"),
    "batch larger than the data": (("training", "batch_size"), 10_000, "training.batch_size"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_suites_give_one_line_exit_2_and_run_nothing(case, tmp_path, capsys):
    (section, key), value, expected = BAD[case]
    raw = yaml.safe_load(TINY)
    raw[section][key] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml" in err[0] and expected in err[0]
    assert not out.exists()


def test_cli_errors_reach_the_shell_as_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", str(tmp_path / "nope.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "nope.yaml" in proc.stderr


@pytest.mark.slow
def test_slurm_path_runs_through_submitits_local_executor(tiny, tmp_path):
    suite = load_suite(tiny, ["grid.seed=[0]"])
    summary = run_suite(
        suite,
        RunOptions(
            out_dir=tmp_path / "o",
            executor="slurm",
            slurm=SlurmOptions(cluster="local", time_min=10),
            progress=False,
        ),
    )
    assert summary.statuses == {"ok": 2}
    assert len(read_records(tmp_path / "o" / "records.jsonl").records) == 2


@pytest.mark.slow
def test_parallel_local_workers_share_one_records_file(tiny, tmp_path):
    summary = run_suite(
        load_suite(tiny), RunOptions(out_dir=tmp_path / "o", workers=2, progress=False)
    )
    assert summary.statuses == {"ok": 6}
    keys = keys_in_file(tmp_path / "o" / "records.jsonl")
    assert len(keys) == len(set(keys)) == 6


@pytest.mark.parametrize(("device", "how"), [("cuda", "spawn"), ("cpu", "forkserver")])
def test_workers_sharing_the_cores_spawn_when_they_train_on_a_gpu(
    tmp_path, monkeypatch, device, how
):
    """More workers than GPUs with ``--device cuda``: the workers share the cores but train on
    the GPU, and a process forked from a server that touched CUDA cannot use it: they spawn.
    CPU workers fork from the fork server."""
    local = bench.sweep.local
    if how not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {how} here")
    asked = []

    def context(method):
        asked.append(method)
        raise RuntimeError("stop before starting any process")

    monkeypatch.setattr(local, "pool_shape", lambda options, cells: (2, False))
    monkeypatch.setattr(local, "get_context", context)
    options = RunOptions(out_dir=tmp_path, device=device, workers=2, progress=False)
    with pytest.raises(RuntimeError, match="stop before"):
        local.WorkerPoolExecutor(options, tmp_path).run(["a", "b"])
    assert asked == [how]


def test_an_unreachable_epsilon_in_the_grid_stops_the_sweep_before_any_cell(tiny, tmp_path, capsys):
    """The reachable cells are not run first: every cell is calibrated before the sweep."""
    suite = yaml.safe_load(tiny.read_text())
    suite["grid"]["privacy.epsilon"] = [8.0, 1000.0]
    path = tmp_path / "eps.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "privacy.epsilon=1000.0" in err and "needs a noise multiplier below" in err
    assert not out.exists()


def test_pending_cells_reads_the_records_file_once_whatever_the_number_of_cells(
    tiny, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    args = ["run", str(tiny), "--out", str(out), "--no-progress", "--set", "grid.seed=[0]"]
    assert main(args) == 0
    reads: list[Path] = []

    def counting(path):
        reads.append(path)
        return read_records(path)

    monkeypatch.setattr(bench.sweep.resume, "read_records", counting)
    cells = load_suite(tiny).cells()
    todo, already = pending_cells(cells, out / "records.jsonl", force=False)
    assert len(reads) == 1
    assert (len(todo), already) == (4, 2)  # seeds 1 and 2 of both norms; seed 0 recorded


def test_every_run_flag_reaches_the_option_named_after_it(tmp_path):
    flags = "--force --retry-failed --allow-mixed-env --device cpu --executor slurm --workers 3"
    flags += " --keep-checkpoints --no-progress --slurm-partition gpu --slurm-time-min 30"
    flags += " --slurm-gpus 2 --slurm-parallel 4 --slurm-cluster local --slurm-step-s 0.5"
    args = build_parser().parse_args(["run", "s.yaml", *flags.split()])
    slurm = SlurmOptions(
        partition="gpu", time_min=30, gpus=2, parallel=4, cluster="local", step_s=0.5
    )
    assert _run_options(args, tmp_path) == RunOptions(
        out_dir=tmp_path,
        force=True,
        retry_failed=True,
        allow_mixed_env=True,
        device="cpu",
        executor="slurm",
        workers=3,
        slurm=slurm,
        progress=False,
        keep_checkpoints=True,
    )
    assert _run_options(build_parser().parse_args(["run", "s.yaml"]), tmp_path) == RunOptions(
        out_dir=tmp_path, device="auto"
    )
