"""A failing or hanging part of the GPU report costs only itself; an isolated part keeps its
measurements. (The whole report runs end to end on the CPU inside the GPU window's rehearsal,
`tests/perf/test_gpu_window.py`, which checks every part.)"""

from __future__ import annotations

import json

import torch

from bench.perf import gpu_report
from bench.perf.__main__ import main
from bench.perf.parts import PARTS, table
from bench.perf.parts.base import TINY


def test_a_failing_part_is_reported_with_its_error_and_the_rest_still_runs(tmp_path, monkeypatch):
    def boom(run):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def quick(run):
        run.data["rows"] = []
        run.measured()

    monkeypatch.setitem(PARTS, "bf16", (PARTS["bf16"][0], boom, PARTS["bf16"][2]))
    monkeypatch.setitem(PARTS, "table", (PARTS["table"][0], quick, table.render))
    path, results = gpu_report.write_report(
        tmp_path,
        sizes=TINY,
        device=torch.device("cpu"),
        parts=["bf16", "table"],
        isolate=False,
        command="test",
    )
    assert [r["status"] for r in results] == ["failed", "ok"]
    text = path.read_text()
    assert "failed: RuntimeError: CUDA error: an illegal memory access" in text
    assert "(nothing measured)" in text


def test_an_isolated_part_runs_in_its_own_process_and_keeps_its_measurements(tmp_path):
    out = tmp_path / "report"
    args = ["--tiny", "--parts", "bf16", "--isolate", "--budget-scale", "4"]
    code = main(["gpu-report", "--out", str(out), *args])
    assert code == 0
    (part,) = json.loads((out / "results.json").read_text())["parts"]
    assert part["status"] in ("ok", "time box")
    assert "seconds" in part["data"]["rows"][0]["fp32"]


def test_a_part_past_its_time_box_is_killed_and_the_report_is_still_written(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_report, "GRACE_S", 0.5)
    path, results = gpu_report.write_report(
        tmp_path,
        sizes=TINY,
        device=torch.device("cpu"),
        parts=["recipe"],
        isolate=True,
        budget_scale=0.01,
        command="test",
    )
    assert results[0]["status"] == "killed"
    assert "killed" in path.read_text()
