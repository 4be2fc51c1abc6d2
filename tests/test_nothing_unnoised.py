"""Nothing un-noised leaves a run by default, and a run trains on the N its accounting assumed."""

from __future__ import annotations

import dataclasses
import math

import torch

import bench.plan
import bench.train.loop
from bench.cli import main
from bench.privacy import Calibration
from bench.results.records import read_records


def test_a_loaded_n_other_than_the_one_that_calibrated_q_stops_the_run_in_one_line(
    tiny, tmp_path, monkeypatch, capsys
):
    counted = bench.plan.data_size

    def one_more(cfg):  # the data changed between counting and loading
        size = counted(cfg)
        return dataclasses.replace(size, n_train=size.n_train + 1)

    monkeypatch.setattr(bench.plan, "data_size", one_more)
    out = tmp_path / "out"
    args = ["run", str(tiny), "--out", str(out), "--no-progress", "--set", "grid.seed=[0]"]
    assert main([*args, "--set", "grid.norm=[group_norm]"]) == 2
    # The cost pre-flight's lines come first; the run then stops in one line.
    lines = capsys.readouterr().err.strip().splitlines()
    (line,) = [text for text in lines if not text.startswith("pre-flight: ")]
    assert "224 private training examples were loaded" in line  # 256 - 32 public
    assert "calibrated for N=225" in line and "source=synthetic" in line
    assert not (out / "records.jsonl").exists()  # the cell did not run: no record


def run_tiny(tiny, out, *sets: str) -> dict:
    """Run the tiny suite's group_norm seed-0 cell (progress bar on); its one record."""
    sets = ("grid.seed=[0]", "grid.norm=[group_norm]", "training.measure_nonprivate=false", *sets)
    assert (
        main(["run", str(tiny), "--out", str(out), *(a for s in sets for a in ("--set", s))]) == 0
    )
    (record,) = read_records(out / "records.jsonl").records
    return record


def test_the_progress_bar_shows_steps_throughput_and_epsilon_and_no_loss_unless_logged(
    tiny, tmp_path, capsys
):
    quiet = run_tiny(tiny, tmp_path / "a")
    err = capsys.readouterr().err
    assert "step 3/3" in err and "img/s" in err and "eps " in err
    # The live RDP figure is read against the whole run's (here RDP's: 3 steps are too few
    # for PRV, so the run is calibrated under RDP); under PRV see the next test.
    assert quiet["accountant"] == "rdp"
    assert f"eps {quiet['epsilon_spent']:.3g} of {quiet['epsilon_spent']:.3g} (rdp)" in err
    logged = run_tiny(tiny, tmp_path / "b", "training.log_private_loss=true")
    shown = f"loss {logged['final_train_loss']:.3f}"
    assert logged["run_key"] == quiet["run_key"]  # the same run: the same private loss
    assert shown in capsys.readouterr().err
    assert "loss" not in err and f"{logged['final_train_loss']:.3f}" not in err


def test_the_live_rdp_epsilon_is_read_against_the_whole_runs_and_the_prv_it_records():
    """RDP is looser than PRV: a run calibrated to 8 under PRV passes 8 under RDP before its
    last step, so the bar says what the RDP figure climbs to and what the run records."""
    cal = Calibration(1.0, 0.01, 120, (), "prv", 8.0, {"prv": 8.0, "rdp": 10.41})
    assert bench.train.loop.budget_text(cal) == "of 10.4 (rdp; the run spends 8 by prv)"
    assert (
        bench.train.loop.budget_text(dataclasses.replace(cal, accountant="rdp", epsilon=10.41))
        == "of 10.4 (rdp)"
    )


def test_the_live_epsilon_of_a_tan_simulation_does_not_read_as_the_target(tiny, tmp_path, capsys):
    """A TAN simulation is calibrated at the suite's batch but draws a smaller one at a smaller
    sigma: it spends far more than the target, and the bar says it simulates the target."""
    record = run_tiny(tiny, tmp_path / "tan", "privacy.simulate_batch_size=16")
    err = capsys.readouterr().err
    assert (
        record["dp_valid"] is False
        and record["epsilon_spent"] > 1.5 * record["simulated"]["epsilon"]
    )
    assert "the run spends" not in err and "(rdp)" not in err
    target = record["simulated"]["epsilon"]
    assert f"(rdp; a TAN simulation, not DP: it simulates ε {target:.3g} at batch 64)" in err


def test_the_default_divergence_stop_reads_the_parameters_not_the_private_loss(
    tiny, tmp_path, monkeypatch
):
    # Every private loss is above max_loss: the default check never reads it.
    record = run_tiny(tiny, tmp_path / "a", "training.max_loss=1.0e-6")
    assert record["status"] == "ok" and record["divergence_check"] == "parameters"
    assert record["nonprivate_diagnostics"] == []
    real, updates = bench.train.loop.after_update, []

    def poisoned(scheduler, ema, model):  # the update of step 1 overflows
        real(scheduler, ema, model)
        updates.append(1)
        if len(updates) == 2:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = math.inf

    monkeypatch.setattr(bench.train.loop, "after_update", poisoned)
    record = run_tiny(tiny, tmp_path / "b")
    assert record["status"] == "failed" and record["diverged"] is True
    assert record["error"] == (
        "diverged: a parameter was not finite after the update of step 1"
        " (training.divergence_check=parameters: reads only the noised updates)"
    )
    assert record["nonprivate_diagnostics"] == []  # the stop released nothing un-noised
