"""A recorded final run's epsilon_with_tuning is revised when its grid point's tuning runs grow
after it (`bench.sweep.restate`), in place, keeping the earlier figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import bench.sweep.run
from bench.plan import plan_cells
from bench.privacy_tuning import composed
from bench.results.leaderboard.with_tuning import header_lines
from bench.results.records import (
    append_record,
    read_every_record,
    read_records,
    revise_record,
    run_identity,
    superseded_path,
)
from bench.suite import load_suite
from bench.sweep.executor import Executor
from bench.sweep.options import RunOptions
from bench.sweep.protocol import finished_runs, tune_cells
from bench.sweep.restate import _stale, taken_history, understates
from bench.sweep.run import _final_stage, run_suite
from bench.train.record import with_tuning_fields
from tests.tiny_suite import tiny_tune


def _tuning_record(cell, acc):
    status = "ok" if acc is not None else "failed"
    return {"run_key": cell.run_key, "status": status, "val_acc": acc, "num_classes": 10,
            "stage": "tune", "tuned": dict(cell.tuned)}  # fmt: skip


def _final_record(cell):
    """An ok final record as the engine writes its privacy fields (its planned run taken)."""
    (plan,) = plan_cells([cell])
    record = {
        "run_key": cell.run_key, "status": "ok", "stage": "final", "norm": cell.norm,
        "backbone": cell.backbone, "seed": cell.seed, "test_acc": 0.3, "num_classes": 10,
        "delta": cell.privacy.delta, "accountant": "rdp", "dp_valid": True,
        "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
        "steps": plan.steps, "steps_done": plan.steps, "epsilon_spent": 8.0,
        "privacy_charges": [c.as_record() for c in plan.charges],
    }  # fmt: skip
    taken = taken_history(record)
    return {**record, **with_tuning_fields(cell.tuning_history, taken, cell.privacy.delta, "rdp")}


def test_a_tuning_run_retried_after_the_final_run_is_composed_into_its_recorded_epsilon(
    tmp_path: Path,
):
    """lr 2 fails, the final run selects lr 0.5 and is recorded; --retry-failed then reruns
    lr 2 (scoring lower, so the selection and the final cell stay). The final run is not run
    again, but the procedure now holds the failed lr-2 run, its retry and lr 0.5: the sweep
    revises the final record's figure in place, keeps the old one, and does it once."""
    (tmp_path / "tune.yaml").write_text(tiny_tune(norms="group_norm", seeds="0"))
    suite = load_suite(tmp_path / "tune.yaml")
    out = tmp_path / "out"
    path = out / "records.jsonl"
    lr = {c.tuned["training.lr"]: c for c in tune_cells(suite)}
    append_record(path, _tuning_record(lr[0.5], 0.2))
    append_record(path, _tuning_record(lr[2.0], None))
    options = RunOptions(out_dir=out, progress=False, report=False, retry_failed=True)
    _, (final,), _ = _final_stage(suite, path, options)
    append_record(path, _final_record(final))
    before = read_records(path).records[-1]
    append_record(path, _tuning_record(lr[2.0], 0.1))  # the retry: lr 0.5 is still selected

    summary = run_suite(suite, options)

    assert summary.ran == 0 and summary.already_done == 3
    (revised,) = [r for r in read_records(path).records if r["stage"] == "final"]
    (one_run,) = [lr[2.0]]
    tuning = composed([final.tuning_history, _planned(one_run)])  # lr 0.5, lr 2 twice
    assert revised["epsilon_with_tuning_history"] == [
        list(e) for e in composed([tuning, taken_history(before)])
    ]
    assert revised["epsilon_with_tuning"] > before["epsilon_with_tuning"]
    (kept,) = revised["epsilon_with_tuning_revisions"]
    assert kept["epsilon_with_tuning"] == before["epsilon_with_tuning"]
    assert kept["epsilon_with_tuning_history"] == before["epsilon_with_tuning_history"]
    assert "finished after this run was recorded" in kept["why"]
    assert {k: v for k, v in revised.items() if "with_tuning" not in k} == {
        k: v for k, v in before.items() if "with_tuning" not in k
    }
    # The same run, revised: not a second attempt of the final cell, nothing superseded.
    every = [*read_every_record(path), *read_every_record(superseded_path(path))]
    assert finished_runs(every)[final.run_key] == 1
    assert "recomputed for 1 final run" in header_lines(read_records(path).records, {"tune": 1})[0]
    # Once: a second sweep finds the figure current and leaves the file alone.
    text = path.read_bytes()
    run_suite(suite, options)
    assert path.read_bytes() == text


def _planned(cell):
    (plan,) = plan_cells([cell])
    return composed([[*(c.history_entry() for c in plan.charges),
                      (plan.noise_multiplier, plan.sample_rate, plan.steps)]])  # fmt: skip


def test_only_an_understatement_is_revised():
    stored = [[1.0, 0.01, 10], [10.0, 1.0, 2]]
    assert not understates(stored, [(1.0, 0.01, 10), (10.0, 1.0, 2)])
    assert not understates(stored, [(1.0, 0.01, 5)])  # holds more than the procedure: kept
    assert understates(stored, [(1.0, 0.01, 10), (10.0, 1.0, 3)])
    assert understates(stored, [(1.5, 0.01, 1)])
    # A float's trip through JSON and back is exact; a sigma equal to 1e-12 relative matches.
    assert not understates(stored, [(1.0 + 1e-12, 0.01, 10)])


def test_a_forced_sweep_stopped_before_its_final_runs_leaves_their_figures_alone(
    tmp_path: Path, monkeypatch
):
    """Under --force a recorded final cell is to run again, and is charged its current record
    as an earlier attempt; restating that record against it would charge its own run twice.
    A forced sweep stopped before the final runs record (here: its executor runs nothing)
    leaves the final record exactly as it was."""
    (tmp_path / "tune.yaml").write_text(tiny_tune(norms="group_norm", seeds="0"))
    suite = load_suite(tmp_path / "tune.yaml")
    out = tmp_path / "out"
    path = out / "records.jsonl"
    for cell, acc in zip(tune_cells(suite), (0.1, 0.2, 0.15, 0.12), strict=False):
        append_record(path, _tuning_record(cell, acc))
    options = RunOptions(out_dir=out, progress=False, report=False)
    _, (final,), _ = _final_stage(suite, path, options)
    append_record(path, _final_record(final))
    text = path.read_bytes()

    class Stopped(Executor):
        def run(self, cells):
            return ["interrupted"] * len(cells)

    monkeypatch.setattr(bench.sweep.run, "create_executor", Stopped)
    run_suite(suite, dataclasses.replace(options, force=True))
    assert path.read_bytes() == text


def test_revise_record_rewrites_one_line_in_place_or_nothing(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    for key in ("a", "b"):
        append_record(path, {"run_key": key, "status": "ok", "epsilon_with_tuning": 1})
    other = path.read_bytes().splitlines(keepends=True)[1]
    assert not revise_record(path, "missing", lambda r: {"epsilon_with_tuning": 2})
    assert not revise_record(path, "a", lambda r: None)
    assert revise_record(path, "a", lambda r: {"epsilon_with_tuning": r["epsilon_with_tuning"] + 1})
    every = read_every_record(path)
    assert [(r["run_key"], r["epsilon_with_tuning"]) for r in every] == [("a", 2), ("b", 1)]
    assert path.read_bytes().splitlines(keepends=True)[1] == other  # the rest kept as bytes
    assert not superseded_path(path).exists()
    assert not revise_record(tmp_path / "none.jsonl", "a", lambda r: {"epsilon_with_tuning": 2})
    # Only a derived figure changes: the run itself (its outcome, its status) cannot.
    with pytest.raises(ValueError, match="test_acc"):
        revise_record(path, "a", lambda r: {"test_acc": 0.9})


def test_a_revised_record_left_in_both_files_by_a_kill_is_still_one_run(tmp_path: Path):
    """A kill between append_record's two writes leaves a record in both files, one run;
    revising the copy in the records file keeps it one run, not a phantom earlier attempt."""
    path = tmp_path / "records.jsonl"
    record = {"run_key": "a", "status": "ok", "test_acc": 0.3, "epsilon_with_tuning": 9.0}
    append_record(path, record)
    append_record(superseded_path(path), record)
    revise_record(path, "a", lambda r: {"epsilon_with_tuning": 9.5})
    every = [*read_every_record(path), *read_every_record(superseded_path(path))]
    assert finished_runs(every) == {"a": 1}
    assert run_identity(every[0]) == run_identity(every[1])
    assert finished_runs([*every, {**record, "test_acc": 0.4}]) == {"a": 2}


def test_only_a_finished_ok_final_record_with_a_lagging_figure_is_restated():
    """`_stale`'s refusals: a failed run, a tuning run and a record with no figure are left
    alone, and so is a figure not below the recomputed one (histories that differ without
    lagging); an ok final record whose history lacks a tuning run is revised."""
    taken = {"noise_multiplier": 1.0, "sample_rate": 0.01, "steps_done": 10}
    tuning = [(2.0, 0.01, 10)]
    stored = [[2.0, 0.01, 5], [1.0, 0.01, 10]]  # half the tuning steps the procedure has
    lagging = {"run_key": "f", "status": "ok", "stage": "final", "delta": 1e-5,
               "accountant": "rdp", "epsilon_with_tuning": 1.0,
               "epsilon_with_tuning_history": stored, **taken}  # fmt: skip
    fields = _stale(lagging, tuning)
    assert fields is not None and fields["epsilon_with_tuning"] > 1.0
    assert fields["epsilon_with_tuning_revisions"][0]["epsilon_with_tuning"] == 1.0
    assert _stale({**lagging, "status": "failed"}, tuning) is None
    assert _stale({**lagging, "stage": "tune"}, tuning) is None
    assert _stale({**lagging, "epsilon_with_tuning_history": None}, tuning) is None
    assert _stale({**lagging, "epsilon_with_tuning": 1e9}, tuning) is None
    covered = [[2.0, 0.01, 10], [1.0, 0.01, 10]]
    assert _stale({**lagging, "epsilon_with_tuning_history": covered}, tuning) is None
