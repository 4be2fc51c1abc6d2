"""Sweeps fail safe: SLURM is never silently emulated, infrastructure failures are `interrupted`
and re-run, cell failures stay `failed` until `--retry-failed`, bad norm parameters stop the
suite at load time."""

from __future__ import annotations

import json
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import submitit

import bench.sweep.local
import bench.sweep.slurm
import bench.train.cell
from bench.cli import main
from bench.errors import ConfigError
from bench.results.records import read_records
from bench.suite import load_suite
from bench.sweep.cell import record_interrupted
from bench.sweep.options import RunOptions, SlurmOptions
from bench.sweep.run import run_suite
from bench.sweep.slurm import SlurmCellJob, slurm_time_limit_min


def newest(out: Path) -> dict[str, dict]:
    return {r["run_key"]: r for r in read_records(out / "records.jsonl").records}


@pytest.fixture
def calls(monkeypatch) -> list:
    """The cells `train_cell` is asked to run."""
    seen: list = []
    real = bench.train.cell.train_cell

    def spy(cell, device, **kwargs):
        seen.append(cell.run_key)
        return real(cell, device, **kwargs)

    monkeypatch.setattr(bench.train.cell, "train_cell", spy)
    return seen


def test_slurm_where_there_is_none_is_refused_before_anything(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.sweep.slurm.shutil, "which", lambda _name: None)
    out = tmp_path / "out"
    assert main(["run", str(tiny), "--out", str(out), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "SLURM is not available" in err and "--slurm-cluster local" in err
    assert not out.exists()


def test_an_interrupted_cell_reruns_on_a_plain_rerun_and_a_diverged_one_does_not(
    tiny, tmp_path, calls
):
    out = tmp_path / "out"
    sets = ["grid.seed=[0]", "grid.training.max_loss=[1.0e-6, 1.0e4]"]
    sets += ["training.divergence_check=private_loss"]
    args = ["run", str(tiny), "--out", str(out), "--no-progress"]
    args += [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    assert len(calls) == 4
    diverged = {k for k, r in newest(out).items() if r["status"] == "failed"}
    assert len(diverged) == 2
    # a later attempt at an ok cell was ended by its job's time limit: its newest record
    lost = next(c for c in load_suite(tiny, sets).cells() if c.run_key not in diverged)
    record_interrupted(lost, out / "records.jsonl", "job 12_0 ended without a record: timeout")
    calls.clear()
    assert main(args) == 0
    assert calls == [lost.run_key]  # the interrupted cell, and not the diverged ones
    assert newest(out)[lost.run_key]["status"] == "ok"
    calls.clear()
    assert main([*args, "--retry-failed"]) == 0
    assert sorted(calls) == sorted(diverged)  # exactly the failed cells
    # each re-run replaced its cell's record; the replaced ones are kept aside, out of the tables
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(x)["run_key"] for x in lines}) == 4
    old = [json.loads(x) for x in (out / "records.superseded.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in old) == ["failed", "failed", "interrupted", "ok"]


def test_a_dead_worker_leaves_its_unfinished_cells_interrupted(tiny, tmp_path, monkeypatch):
    class DeadPool:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, cells, *args):
            future: Future = Future()
            future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
            return future

    monkeypatch.setattr(bench.sweep.local, "ProcessPoolExecutor", DeadPool)
    out = tmp_path / "out"
    summary = run_suite(load_suite(tiny), RunOptions(out_dir=out, workers=2, progress=False))
    assert summary.statuses == {"interrupted": 6}
    records = newest(out)
    assert all("worker process died" in r["error"] for r in records.values())
    board = (out / "leaderboard.md").read_text()
    assert "6 interrupted" in board and "re-running the suite runs them again" in board


class FakeJob:
    def __init__(self, job_id: str, outcome):
        self.job_id, self.outcome = job_id, outcome

    def result(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def fake_executor(outcomes: list, seen: dict):
    class Executor:
        def __init__(self, folder, cluster=None):
            seen["cluster"] = cluster

        def update_parameters(self, **params):
            seen["params"] = params

        def map_array(self, fn, cells, *rest):
            seen["fn"] = fn
            return [FakeJob(f"7_{i}", outcomes[i]) for i in range(len(cells))]

    return Executor


def test_a_job_ending_without_a_record_is_interrupted_and_a_raising_one_failed(
    tiny, tmp_path, monkeypatch
):
    seen: dict = {}
    outcomes = [
        submitit.core.utils.UncompletedJobError("timed-out and not checkpointable"),
        submitit.core.utils.FailedJobError("Traceback ...\nDataError: cannot read the data"),
    ]
    monkeypatch.setattr(submitit, "AutoExecutor", fake_executor(outcomes, seen))
    out = tmp_path / "out"
    summary = run_suite(
        load_suite(tiny, ["grid.seed=[0]"]),
        RunOptions(
            out_dir=out,
            executor="slurm",
            slurm=SlurmOptions(cluster="local", step_s=2.0),
            progress=False,
        ),
    )
    assert summary.statuses == {"interrupted": 1, "failed": 1}
    errors = sorted(r["error"] for r in newest(out).values())
    assert "DataError: cannot read the data" in errors[1]
    assert "ended without a record" in errors[0] and "timed-out" in errors[0]
    assert isinstance(seen["fn"], SlurmCellJob)
    # 3 steps x 2 s with 50% headroom, plus 10 minutes
    assert seen["params"]["timeout_min"] == slurm_time_limit_min(load_suite(tiny).cells(), 2.0)
    assert seen["params"]["timeout_min"] == 11


def test_slurm_jobs_requeue_themselves_on_a_time_limit():
    job = SlurmCellJob()
    delayed = job.checkpoint("cell", "records.jsonl", None)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is job and delayed.args == ("cell", "records.jsonl", None)


@pytest.mark.parametrize(
    ("norm", "says"),
    [
        ("kernel_norm[dropout=2]", "dropout=2.0 is not a probability"),
        ("group_norm[num_groups=7]", "16 channels do not split into 7 groups"),
        # 16 channels take min(24, 16) groups; the 32-channel stage cannot take 24
        ("group_norm[num_groups=24]", "32 channels do not split into 24 groups"),
    ],
)
def test_a_norm_parameter_refused_at_some_channel_count_stops_the_suite_at_load(tiny, norm, says):
    with pytest.raises(ConfigError) as err:
        load_suite(tiny, [f'grid.norm=["group_norm", "{norm}"]'])
    text = str(err.value)
    assert text.startswith(f"{tiny}: grid.norm[1] (from --set): resnet9[width=0.125]")
    assert says in text and "allowed:" in text
