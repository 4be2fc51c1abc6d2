"""Nothing un-noised leaves a run by default, and a run trains on the N its accounting assumed."""

from __future__ import annotations

import dataclasses

import bench.plan
from bench.cli import main


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
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "224 private training examples were loaded" in line  # 256 - 32 public
    assert "calibrated for N=225" in line and "source=synthetic" in line
    assert not (out / "records.jsonl").exists()  # the cell did not run: no record
