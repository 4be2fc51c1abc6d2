"""A killed run resumes from its checkpoint with the record it would have had; saved models load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import atomic, checkpoint
from bench.cli import main
from bench.results.records import read_records
from bench.suite import load_suite
from bench.sweep.cell import run_cell
from bench.sweep.options import RunOptions
from bench.sweep.run import run_suite
from bench.sweep.slurm import SlurmCellJob
from bench.train.cell import train_cell
from bench.train.evaluate import evaluate
from bench.train.setup import setup_run
from tests.resume_tools import Killed, cell, comparable, kill_at, overwrite_mid_tensor
from tests.tiny_suite import ROOT, TINY

CPU = torch.device("cpu")

#: DP statistics, noisy enough to leave DP-SGD part of epsilon 8 on 224 private examples.
PRIVATE_DP = 'grid.norm=["dp_batch_norm[noise_multiplier=2.0,stats=private_dp]"]'


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            ["training.ema=0.9", "training.augmult=2", "training.momentum=0.9"],
            id="bk-ema-augmult-momentum",
        ),
        pytest.param(["training.grad_sample_mode=hooks"], id="hooks"),
        pytest.param(["training.grad_sample_mode=functorch", "training.ema=0.9"], id="functorch"),
        pytest.param(
            [PRIVATE_DP, "training.augmult=2"],
            id="dp_batch_norm-private_dp",
        ),
    ],
)
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_record(tmp_path, overrides):
    c = cell(tmp_path, "training.log_private_loss=true", *overrides)
    whole = train_cell(c, CPU)
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(Killed):
        train_cell(c, CPU, progress=kill_at(3), checkpoint_dir=ckpts)
    assert checkpoint.checkpoint_path(ckpts, c.run_key).exists()
    resumed = train_cell(c, CPU, checkpoint_dir=ckpts)
    assert whole["resumed_from_step"] is None and resumed["resumed_from_step"] == 2
    assert resumed["final_train_loss"] is not None
    assert comparable(resumed) == comparable(whole)


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "other-config"])
def test_an_unusable_checkpoint_is_named_in_one_line_and_the_run_starts_over(
    tmp_path, capsys, kind
):
    c = cell(tmp_path)
    ckpts = tmp_path / "checkpoints"
    path = checkpoint.checkpoint_path(ckpts, c.run_key)
    if kind == "other-config":
        checkpoint.save(path, {"step": 2}, cell(tmp_path, "training.lr=0.5").checkpoint_hash)
    else:
        checkpoint.save(path, {"step": 2, "w": torch.zeros(1000)}, c.checkpoint_hash)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"\0" * len(data))
    capsys.readouterr()
    record = train_cell(c, CPU, checkpoint_dir=ckpts)
    lines = capsys.readouterr().err.strip().splitlines()
    assert record["resumed_from_step"] is None and record["steps_done"] == 5
    assert len(lines) == 1 and "starting over" in lines[0] and c.run_key in lines[0]


def test_checkpoint_settings_do_not_change_the_run_key_or_the_checkpoint_hash(tmp_path):
    a, b = cell(tmp_path), cell(tmp_path, "training.checkpoint_every=7", "training.save_model=true")
    assert a.run_key == b.run_key
    assert a.checkpoint_hash == b.checkpoint_hash
    assert a.checkpoint_hash != cell(tmp_path, "training.lr=0.5").checkpoint_hash


def test_a_requeued_slurm_job_resumes_from_the_checkpoint_and_then_deletes_it(tmp_path):
    c = cell(tmp_path)
    records = tmp_path / "out" / "records.jsonl"
    with pytest.raises(KeyboardInterrupt):  # preempted: no record, the checkpoint stays
        run_cell(c, records, "cpu", progress=kill_at(3, KeyboardInterrupt))
    assert not records.exists()
    path = checkpoint.checkpoint_path(records.parent / "checkpoints", c.run_key)
    assert path.exists()
    assert SlurmCellJob()(c, str(records), "cpu") == "ok"  # what submitit's requeue calls
    (record,) = read_records(records).records
    assert record["resumed_from_step"] == 2 and record["steps_done"] == 5
    assert not path.exists()


@pytest.mark.parametrize("ema", [None, 0.9], ids=["final", "ema"])
def test_a_saved_model_loads_with_weights_only_and_reproduces_the_accuracy(tmp_path, ema):
    c = cell(tmp_path, "training.save_model=true", f"training.ema={'null' if ema is None else ema}")
    records = tmp_path / "out" / "records.jsonl"
    record = run_cell(c, records, "cpu")
    assert record["model_path"] == f"models/{c.run_key}.pt"
    saved = torch.load(records.parent / record["model_path"], weights_only=True)
    assert saved["eval_weights"] == record["eval_weights"] == ("final" if ema is None else "ema")
    assert (saved["weights"]["ema"] is None) == (ema is None)
    run = setup_run(c, CPU)
    run.model.load_state_dict(saved["weights"][saved["eval_weights"]])
    t = c.training
    assert evaluate(run.model, run.data, t.eval_batch_size, t.precision) == record["test_acc"]


def test_private_dp_statistics_are_restored_and_their_charge_is_paid_once(tmp_path):
    c = cell(tmp_path, PRIVATE_DP)
    whole = train_cell(c, CPU)
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(Killed):
        train_cell(c, CPU, progress=kill_at(3), checkpoint_dir=ckpts)
    state = checkpoint.load(checkpoint.checkpoint_path(ckpts, c.run_key), c.checkpoint_hash).state
    stats = {k: v for k, v in state["model"].items() if k.endswith((".mean", ".var"))}
    assert stats, "the checkpoint holds the DP statistics with the model"
    resumed = train_cell(c, CPU, checkpoint_dir=ckpts)
    assert resumed["resumed_from_step"] == 2
    assert resumed["privacy_charges"] == whole["privacy_charges"] != []
    assert resumed["steps_done"] == whole["steps_done"] == 5  # DP-SGD steps, none twice
    assert resumed["epsilon_spent"] == whole["epsilon_spent"]
    assert resumed["epsilon_spent_by_accountant"] == whole["epsilon_spent_by_accountant"]
    assert resumed["test_acc"] == whole["test_acc"]


def _suite_args(suite: Path, out: Path, *sets: str) -> list[str]:
    args = ["run", str(suite), "--out", str(out), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return args


#: The one-cell sweep the subprocess test kills: long enough (20 steps) that the kill lands
#: between its first checkpoint and its end, short enough to stay a few seconds.
KILLED_SWEEP = (
    "grid.seed=[0]",
    "grid.norm=[group_norm]",
    "training.steps=20",
    "training.checkpoint_every=2",
    "training.measure_nonprivate=false",
    "training.ema=0.9",
)


def test_sigkill_after_the_first_checkpoint_then_a_rerun_ends_with_the_uninterrupted_record(
    tmp_path,
):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    (c,) = load_suite(suite, KILLED_SWEEP).cells()
    out = tmp_path / "killed"
    ckpt = checkpoint.checkpoint_path(out / "checkpoints", c.run_key)
    cmd = [sys.executable, "-m", "bench", *_suite_args(suite, out, *KILLED_SWEEP)]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not ckpt.exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "records.jsonl").exists(), "killed mid-run"
    step = checkpoint.load(ckpt, c.checkpoint_hash).state["step"]

    # The same sweep again (what the command runs, less the leaderboard), and one never killed.
    sweep = load_suite(suite, KILLED_SWEEP)
    assert run_suite(sweep, RunOptions(out_dir=out, progress=False, report=False)).statuses == {
        "ok": 1
    }
    whole_out = tmp_path / "whole"
    run_suite(sweep, RunOptions(out_dir=whole_out, progress=False, report=False))
    (resumed,) = read_records(out / "records.jsonl").records
    (whole,) = read_records(whole_out / "records.jsonl").records
    assert resumed["resumed_from_step"] == step >= 2 and whole["resumed_from_step"] is None
    assert resumed["steps_done"] == 20
    assert comparable(resumed) == comparable(whole)
    assert not ckpt.parent.exists()  # deleted once the record was written


class _Torn(BaseException):
    """A kill between a checkpoint's write and its rename."""


@pytest.mark.parametrize(
    "kind", ["torn-temporary", "killed-before-rename", "torn-newest", "corrupt-newest"]
)
def test_a_kill_or_a_bad_newest_checkpoint_resumes_from_the_older_one(
    tmp_path, monkeypatch, capsys, kind
):
    c = cell(tmp_path)
    # Its predictions too: a resumed run must predict every test example as an uninterrupted one.
    whole = train_cell(c, CPU, predictions_dir=tmp_path / "whole")
    records = tmp_path / "out" / "records.jsonl"
    path = checkpoint.checkpoint_path(records.parent / "checkpoints", c.run_key)
    if kind == "killed-before-rename":
        real, calls = os.replace, []

        def replace_then_die(src, dst):
            if Path(dst).name == checkpoint.FILE:
                calls.append(dst)
                if len(calls) == 2:  # the step-4 checkpoint: written, fsynced, never renamed
                    raise _Torn
            real(src, dst)

        monkeypatch.setattr(atomic.os, "replace", replace_then_die)
        with pytest.raises(_Torn):
            run_cell(c, records, "cpu")
        monkeypatch.undo()
    else:
        with pytest.raises(KeyboardInterrupt):
            run_cell(c, records, "cpu", progress=kill_at(5, KeyboardInterrupt))
        data = path.read_bytes()
        if kind == "torn-temporary":  # what SIGKILL mid-write leaves beside the checkpoint
            (path.parent / ".checkpoint.pt.k1ll3d.tmp").write_bytes(data[: len(data) // 2])
        elif kind == "torn-newest":  # a copy of the newest checkpoint cut short
            path.write_bytes(data[: len(data) // 2])
        else:  # bytes overwritten inside a weight: once resumed from, diverged, recorded failed
            overwrite_mid_tensor(path, checkpoint.load(path, c.checkpoint_hash).state)
    assert not records.exists()
    capsys.readouterr()
    record = run_cell(c, records, "cpu")
    expected = 2 if kind in ("killed-before-rename", "torn-newest", "corrupt-newest") else 4
    assert record["resumed_from_step"] == expected
    err = capsys.readouterr().err.splitlines()
    refusals = [line for line in err if "discarded, resuming from the previous checkpoint" in line]
    assert len(refusals) == kind.endswith("-newest")
    if kind == "corrupt-newest":
        assert "fails its checksum" in refusals[0]
    assert f"{c.run_key}: resuming from step {expected}" in err
    assert comparable({k: record[k] for k in whole}) == comparable(whole)
    assert not path.parent.exists()  # the checkpoint and any torn temporary are deleted


def _only_key(out: Path) -> str:
    (record,) = read_records(out / "records.jsonl").records
    return record["run_key"]


def test_save_models_keeps_run_keys_and_bench_eval_reproduces_the_recorded_accuracy(
    tmp_path, capsys
):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    sets = ("grid.seed=[0]", "grid.norm=[group_norm]", "training.measure_nonprivate=false")
    sets += ("training.ema=0.9",)
    out = tmp_path / "out"
    assert main([*_suite_args(suite, out, *sets), "--save-models"]) == 0
    key = _only_key(out)
    assert key == load_suite(suite, sets).cells()[0].run_key  # run key as without the flag
    (record,) = read_records(out / "records.jsonl").records
    saved = torch.load(out / record["model_path"], weights_only=True)
    assert saved["run_key"] == key and saved["eval_weights"] == record["eval_weights"] == "ema"
    assert set(saved["weights"]) == {"final", "ema"}
    assert saved["weights"]["final"].keys() == saved["weights"]["ema"].keys()
    capsys.readouterr()

    assert main(["eval", str(out), key, "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{key}: test_acc {record['test_acc']:.4f}") and "ema weights" in line

    # The record says one image more was right than the weights get: a mismatch, one line.
    lines = (out / "records.jsonl").read_text().splitlines()
    changed = json.loads(lines[-1])
    changed["test_acc"] += 1 / changed["n_test"]
    (out / "records.jsonl").write_text("\n".join([*lines, json.dumps(changed)]) + "\n")
    assert main(["eval", str(out), key, "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: run {key}: the saved weights score")


def test_bench_eval_refuses_a_missing_model_or_run_key_in_one_line_exit_2(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    sets = ("grid.seed=[0]", "grid.norm=[group_norm]", "training.measure_nonprivate=false")
    plain, saved = tmp_path / "plain", tmp_path / "saved"
    assert main(_suite_args(suite, plain, *sets)) == 0
    assert main([*_suite_args(suite, saved, *sets), "--save-models"]) == 0
    key = _only_key(saved)
    (saved / "models" / f"{key}.pt").unlink()
    capsys.readouterr()
    cases = {
        "model file not found": [str(saved), key],
        "saved no model: re-run it with --save-models": [str(plain), key],
        f"did you mean {key!r}": [str(saved), key[:-1] + ("0" if key[-1] != "0" else "1")],
        "records file not found": [str(tmp_path / "nowhere"), key],
    }
    for message, args in cases.items():
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    # A tuning run's exact validation accuracy is not private: never re-scored (issue 26).
    records = saved / "records.jsonl"
    line = json.loads(records.read_text())
    records.write_text(json.dumps({**line, "stage": "tune", "model_path": "models/x.pt"}) + "\n")
    assert main(["eval", str(saved), key]) == 2
    assert "is a tuning run" in capsys.readouterr().err


def test_keep_checkpoints_keeps_them_and_force_starts_over_from_step_0(tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    sets = ("grid.seed=[0]", "grid.norm=[group_norm]", "training.measure_nonprivate=false")
    sets += ("training.steps=5", "training.checkpoint_every=2")
    out = tmp_path / "out"
    records = out / "records.jsonl"
    (c,) = load_suite(suite, sets).cells()
    path = checkpoint.checkpoint_path(out / "checkpoints", c.run_key)
    assert main(_suite_args(suite, out, *sets)) == 0
    assert not path.parent.exists()  # by default deleted with the record

    def forced(*flags: str) -> dict:
        capsys.readouterr()
        assert main([*_suite_args(suite, out, *sets), "--force", *flags]) == 0
        assert "--force: discarded 1 checkpoints" in capsys.readouterr().err
        newest = read_records(records).records[-1]
        assert newest["resumed_from_step"] is None and newest["steps_done"] == 5
        return newest

    with pytest.raises(KeyboardInterrupt):  # a killed re-run leaves its step-2 checkpoint
        run_cell(c, records, "cpu", progress=kill_at(3, KeyboardInterrupt))
    assert checkpoint.load(path, c.checkpoint_hash).state["step"] == 2
    forced("--keep-checkpoints")  # started from step 0, and kept its last checkpoint
    assert checkpoint.load(path, c.checkpoint_hash).state["step"] == 4
    forced()  # the kept one is discarded too, then deleted with the record
    assert not path.parent.exists()
