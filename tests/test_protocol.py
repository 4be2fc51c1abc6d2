"""The two-stage protocol (tune on a validation split, final on the test set) and TAN simulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bench.train.cell
import bench.train.data_cache
from bench.cli import main
from bench.config import DataConfig
from bench.data import DeviceData, load_dataset
from bench.errors import ConfigError
from bench.plan import plan_cell
from bench.results.records import read_records
from bench.suite import load_suite
from bench.sweep.options import RunOptions
from bench.sweep.protocol import final_cells, select, tune_cells
from bench.sweep.run import run_suite
from tests.tiny_suite import tiny_tune

TUNE = tiny_tune()


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(TUNE)
    return path


def by_stage(out: Path) -> dict[str, list[dict]]:
    records = read_records(out / "records.jsonl").records
    return {s: [r for r in records if r.get("stage") == s] for s in ("tune", "final")}


def test_the_protocol_tunes_on_validation_then_runs_the_final_seeds(suite_file, tmp_path):
    out = tmp_path / "out"
    summary = run_suite(load_suite(suite_file), RunOptions(out_dir=out, progress=False))
    assert summary.total == 4 + 4 and summary.statuses == {"ok": 8}
    stages = by_stage(out)
    assert len(stages["tune"]) == 4 and len(stages["final"]) == 4
    for r in stages["tune"]:
        assert r["test_acc"] is None and 0 <= r["val_acc"] <= 1 and r["n_val"] == 64
        assert r["steps"] == 2 and r["n_private"] == 320 - 64  # the shorter budget, val held out
    chosen = select(load_suite(suite_file), stages["tune"])
    for r in stages["final"]:
        assert r["val_acc"] is None and 0 <= r["test_acc"] <= 1 and r["n_private"] == 320
        picked = chosen[(r["backbone"], r["norm"], ())].values
        assert r["tuned"] == picked and r["config"]["training"]["lr"] == picked["training.lr"]
        assert r["steps"] == 3
    board = (out / "leaderboard.md").read_text()
    assert "## Tuning (validation split)" in board and "selected" in board
    assert "- **ε with tuning:** ε = " in board and "noisy count" in board


def test_tuning_never_reads_the_test_set(suite_file, tmp_path, monkeypatch):
    """Poisoned test labels leave every validation score, hence every selection, unchanged."""
    suite = load_suite(suite_file)
    clean = tmp_path / "clean"
    run_suite(suite, RunOptions(out_dir=clean, progress=False, report=False))
    real = bench.train.data_cache.cached_dataset

    def poisoned(cfg):
        d = real(cfg)
        wrong = torch.randint(0, 10, d.test_y.shape, generator=torch.Generator().manual_seed(9))
        return type(d)(**{**d.__dict__, "test_y": wrong, "test_x": torch.zeros_like(d.test_x)})

    monkeypatch.setattr(bench.train.data_cache, "cached_dataset", poisoned)
    dirty = tmp_path / "dirty"
    run_suite(suite, RunOptions(out_dir=dirty, progress=False, report=False))

    def scores(out):
        return {r["run_key"]: r["val_acc"] for r in by_stage(out)["tune"]}

    assert scores(clean) == scores(dirty)
    assert select(suite, by_stage(clean)["tune"]) == select(suite, by_stage(dirty)["tune"])


def test_the_validation_split_is_disjoint_from_training_and_public_examples():
    cfg = DataConfig(num_train=300, num_test=20, image_size=8, public_split=40, val_split=50)
    dataset = load_dataset(cfg)
    tuning = DeviceData(dataset, "cpu", holdout=True)
    final = DeviceData(dataset, "cpu")

    def images(x):
        return {bytes(t.numpy().tobytes()) for t in x}

    val, train = images(tuning.test_x), images(tuning.train_x)
    assert len(val) == 50 and tuning.eval_split == "val"
    assert val.isdisjoint(train) and val.isdisjoint(images(dataset.public_x))
    assert val <= images(final.train_x) and final.eval_split == "test"
    assert tuning.num_private == 300 - 40 - 50 and final.num_private == 300 - 40


def test_a_killed_protocol_resumes_in_either_stage(suite_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = ["run", str(suite_file), "--out", str(out), "--no-progress"]
    real, calls = bench.train.cell.train_cell, []

    def killed_at(n):
        def run(cell, device, **kwargs):
            calls.append(cell.stage)
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(cell, device, **kwargs)

        return run

    monkeypatch.setattr(bench.train.cell, "train_cell", killed_at(3))  # in the tuning stage
    assert main(args) == 130
    assert len(by_stage(out)["tune"]) == 2
    calls.clear()
    monkeypatch.setattr(bench.train.cell, "train_cell", killed_at(4))  # 2 tuning runs, then final
    assert main(args) == 130
    assert calls == ["tune", "tune", "final", "final"]
    assert len(by_stage(out)["tune"]) == 4 and len(by_stage(out)["final"]) == 1
    calls.clear()
    monkeypatch.setattr(bench.train.cell, "train_cell", killed_at(99))
    assert main(args) == 0
    assert calls == ["final"] * 3


def test_tune_needs_a_validation_split(suite_file, tmp_path):
    with pytest.raises(ConfigError, match=r"val_split \(from --set\): is 0, but tuning"):
        load_suite(suite_file, ["data.val_split=0"])
    with pytest.raises(ConfigError, match=r"tune\.keys\.training\.lr: is swept by the grid"):
        load_suite(suite_file, ["grid.training.lr=[1.0, 2.0]"])


def test_tuning_cells_hold_the_candidates_and_their_own_run_keys(suite_file):
    suite = load_suite(suite_file)
    cells = tune_cells(suite)
    assert sorted(c.tuned["training.lr"] for c in cells) == [0.5, 0.5, 2.0, 2.0]
    assert all(c.stage == "tune" and c.training.steps == 2 for c in cells)
    finals = {c.run_key for c in suite.cells()}
    assert not finals & {c.run_key for c in cells}


def test_grid_points_a_tuning_override_makes_alike_share_their_tuning_runs(suite_file):
    # tune.overrides sets training.steps, which the grid sweeps: both budgets tune at 2 steps,
    # so each (norm, lr) tuning run is one run, and both budgets' selections read it.
    suite = load_suite(suite_file, ["grid.training.steps=[2, 3]"])
    cells = tune_cells(suite)
    assert len(cells) == 2 * 2  # norms x lr values (x 1 tuning seed), not x 2 budgets
    assert len({c.run_key for c in cells}) == len(cells)
    assert all(c.training.steps == 2 and dict(c.overrides) == {"training.steps": 2} for c in cells)
    best = {"group_norm": 2.0, "layer_norm": 0.5}
    records = [
        {
            "run_key": c.run_key,
            "status": "ok",
            "val_acc": 0.5 if c.tuned["training.lr"] == best[c.norm] else 0.1,
        }
        for c in cells
    ]
    selections = select(suite, records)
    assert len(selections) == 2 * 2  # norms x budgets
    finals = final_cells(suite, selections)
    assert sorted((c.norm, c.training.steps, c.seed) for c in finals) == sorted(
        (n, s, seed) for n in best for s in (2, 3) for seed in (0, 1)
    )
    assert all(c.training.lr == best[c.norm] for c in finals)
    # one tuning run missing: the selections of both budgets wait for it
    waiting = select(suite, records[1:])
    assert sum(s.values is None for s in waiting.values()) == 2


def test_a_shared_tuning_stage_runs_once_and_both_budgets_report(suite_file, tmp_path):
    out = tmp_path / "out"
    suite = load_suite(suite_file, ["grid.training.steps=[2, 3]"])
    summary = run_suite(suite, RunOptions(out_dir=out, progress=False))
    assert summary.statuses == {"ok": 4 + 8}  # 2 norms x 2 lr tuned once; 2 x 2 budgets x 2
    stages = by_stage(out)
    assert len({r["run_key"] for r in stages["tune"]}) == len(stages["tune"]) == 4
    chosen = {(r["norm"], r["tuned"]["training.lr"]) for r in stages["final"]}
    assert len(chosen) == 2  # each norm's one selection, used at both budgets
    assert sorted(r["steps"] for r in stages["final"]) == [2] * 4 + [3] * 4
    board = (out / "leaderboard.md").read_text()
    assert "`training.steps=2` (`tune.overrides`); `training.steps` is swept by the grid" in board
    assert "Kendall" in board


TAN = (
    TUNE.split("tune:")[0]
    + """\
grid:
  backbone: ["resnet9[width=0.125]"]
  norm: [group_norm]
  seed: [0, 1]
  privacy.simulate_batch_size: [null, 16]
"""
)


def test_a_tan_simulation_scales_the_noise_and_keeps_apart_from_dp_runs(tmp_path):
    path = tmp_path / "tan.yaml"
    path.write_text(TAN.replace("val_split: 64", "val_split: 0"))
    suite = load_suite(path)
    dp, tan = (
        next(c for c in suite.cells() if c.privacy.simulate_batch_size == b) for b in (None, 16)
    )
    ref, sim = plan_cell(dp), plan_cell(tan)
    assert sim.noise_multiplier == ref.noise_multiplier * 16 / 64
    assert sim.steps == ref.steps and sim.sample_rate == 16 / 320 and not sim.dp_valid
    out = tmp_path / "out"
    assert run_suite(suite, RunOptions(out_dir=out, progress=False)).statuses == {"ok": 4}
    records = read_records(out / "records.jsonl").records
    simulated = [r for r in records if r["dp_valid"] is False]
    assert len(simulated) == 2
    for r in simulated:
        assert r["noise_multiplier"] == pytest.approx(ref.noise_multiplier / 4)
        assert r["simulated"]["reference_noise_multiplier"] == ref.noise_multiplier
        assert r["epsilon_spent"] > 8.0  # what the simulated run really spent: not private
    board = (out / "leaderboard.md").read_text()
    assert "TAN simulation** of (ε = 8.0, δ = 0.001) at batch 64" in board
    assert "predicts accuracy, gives no privacy" in board
    assert "[privacy.simulate_batch_size=16] [TAN simulation, not DP]" in board
    assert "simulate_batch_size=none]" in board  # null reads "none" in table titles
