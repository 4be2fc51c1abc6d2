"""A killed run resumes from its checkpoint with the record it would have had; saved models load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.engine import _setup, evaluate, train_cell
from bench.loading import load_suite
from bench.results.records import read_records
from bench.runner import SlurmCellJob, run_cell
from tests.test_runner import TINY

CPU = torch.device("cpu")
#: Fields that measure time, the machine or the process, and so differ between two runs.
TIMING = {
    "throughput_img_s",
    "throughput_rel_se",
    "throughput_timed_steps",
    "dp_nonprivate_throughput_ratio",
    "peak_rss_bytes",
    "train_wall_s",
    "wall_s",
    "provenance",
    "resumed_from_step",
}


class Killed(Exception):
    """Stands for SIGKILL or a preemption at a given step."""


def kill_at(step: int, error: type[BaseException] = Killed):
    def progress(done: int, total: int, loss: float) -> None:
        if done == step:
            raise error(done)

    return progress


def cell(tmp_path: Path, *overrides: str):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    base = ["grid.seed=[0]", "grid.norm=[group_norm]", "training.steps=5"]
    base += ["training.checkpoint_every=2", "training.measure_nonprivate=false"]
    (c,) = load_suite(suite, [*base, *overrides]).cells()
    return c


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            ["training.ema=0.9", "training.augmult=2", "training.momentum=0.9"],
            id="bk-ema-augmult-momentum",
        ),
        pytest.param(["training.grad_sample_mode=hooks"], id="hooks"),
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
        checkpoint.save(path, {"step": 2}, checkpoint.cell_hash(cell(tmp_path, "training.lr=0.5")))
    else:
        checkpoint.save(path, {"step": 2, "w": torch.zeros(1000)}, checkpoint.cell_hash(c))
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
    assert checkpoint.cell_hash(a) == checkpoint.cell_hash(b)
    assert checkpoint.cell_hash(a) != checkpoint.cell_hash(cell(tmp_path, "training.lr=0.5"))


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


def test_a_saved_model_loads_with_weights_only_and_reproduces_the_accuracy(tmp_path):
    c = cell(tmp_path, "training.save_model=true", "training.ema=0.9")
    records = tmp_path / "out" / "records.jsonl"
    record = run_cell(c, records, "cpu")
    assert record["model_path"] == f"models/{c.run_key}.pt"
    state = torch.load(records.parent / record["model_path"], weights_only=True)
    run = _setup(c, CPU)
    run.model.load_state_dict(state)
    t = c.training
    assert evaluate(run.model, run.data, t.eval_batch_size, t.precision) == record["test_acc"]
