"""Reproducibility: every sweep writes its environment and constraints, never mixes stacks
silently, and one cell run twice in one environment gives the same record."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bench.cli import main
from bench.environment import EARLIER_MARK
from bench.results.records import read_records
from bench.results.stacks import constraints_text, differences, stack_of
from bench.suite import load_suite
from bench.train.cell import train_cell

#: Record fields that are measurements of time or memory, which vary from run to run.
TIMING_FIELDS = {
    "throughput_img_s",
    "nonprivate_throughput_img_s",
    "dp_nonprivate_throughput_ratio",
    "peak_mem_bytes",
    "nonprivate_peak_mem_bytes",
    "peak_rss_bytes",
    # measured timing noise, and the non-private steps timed until it matches the DP side's
    "throughput_rel_se",
    "nonprivate_throughput_rel_se",
    "nonprivate_timed_steps",
    "peak_mem_abs_bytes",
    "nonprivate_peak_mem_abs_bytes",
    "train_wall_s",
    "wall_s",
}


def run(tiny: Path, out: Path, *extra: str) -> int:
    args = ["run", str(tiny), "--out", str(out), "--no-progress", "--set", "grid.seed=[0]"]
    return main([*args, "--set", "grid.norm=[group_norm]", *extra])


def test_a_sweep_writes_its_environment_and_pip_constraints(tiny, tmp_path):
    out = tmp_path / "out"
    assert run(tiny, out) == 0
    env = (out / "environment.txt").read_text()
    assert f"torch: {torch.__version__}" in env and "python: " in env and "cpu: " in env
    constraints = (out / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in constraints if not line.startswith("#"))
    assert pins["torch"] == torch.__version__.split("+")[0]  # what pip can resolve
    assert {"opacus", "timm", "numpy", "scipy", "torchvision"} <= set(pins)
    assert any("python -m bench run" in line and "--out" in line for line in constraints)


def test_a_resumed_sweep_keeps_the_first_capture_and_adds_a_new_host_above_it(tiny, tmp_path):
    out = tmp_path / "out"
    assert run(tiny, out) == 0
    env = out / "environment.txt"
    first = env.read_text()
    # A second part on the same machine: nothing differs, so the file (and its time) stays.
    assert run(tiny, out, "--set", "grid.seed=[0, 1]") == 0
    assert env.read_text() == first
    # A third part on another host: the earlier capture, naming the old host, stays below.
    env.write_text(first.replace("platform: ", "platform: old-host "))
    assert run(tiny, out, "--set", "grid.seed=[0, 1, 2]") == 0
    text = env.read_text()
    newest, _, older = text.partition(EARLIER_MARK + "\n")
    assert "platform: old-host" not in newest and "platform: " in newest
    assert older == first.replace("platform: ", "platform: old-host ")
    # A fourth part on the new host again changes nothing, stacked file or not, while the
    # constraints name the widened grid's command.
    assert run(tiny, out, "--set", "grid.seed=[0, 1, 2, 3]") == 0
    assert env.read_text() == text
    assert "grid.seed=[0, 1, 2, 3]" in (out / "constraints.txt").read_text()
    # And a fifth after yet another host keeps both earlier captures below the newest.
    env.write_text(text.replace("platform: ", "platform: third-host ", 1))
    assert run(tiny, out, "--set", "grid.seed=[0, 1, 2, 3, 4]") == 0
    assert env.read_text().count("# captured when a sweep") == 3
    assert env.read_text().count(EARLIER_MARK) == 1


def test_appending_under_another_stack_is_refused_unless_allowed(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny, out) == 0
    records = out / "records.jsonl"
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    for record in lines:
        record["provenance"]["torch"] = "2.0.0+cu118"
    records.write_text("".join(json.dumps(r) + "\n" for r in lines))
    capsys.readouterr()
    assert run(tiny, out, "--set", "grid.seed=[0, 1]") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"torch 2.0.0+cu118 -> {torch.__version__}" in err and "--allow-mixed-env" in err
    assert len(read_records(records).records) == 1  # nothing ran
    assert run(tiny, out, "--set", "grid.seed=[0, 1]", "--allow-mixed-env") == 0
    board = (out / "leaderboard.md").read_text()
    assert "2 software stacks" in board and "## Software stacks" in board
    assert "torch 2.0.0+cu118" in board and f"torch {torch.__version__}" in board


def test_one_cell_run_twice_in_one_environment_gives_the_same_record(tiny):
    (cell,) = load_suite(tiny, ["grid.seed=[0]", "grid.norm=[kernel_norm]"]).cells()
    first, second = (train_cell(cell, torch.device("cpu")) for _ in range(2))
    differ = {k for k in first if first[k] != second[k]} - TIMING_FIELDS
    assert differ == set(), {k: (first[k], second[k]) for k in differ}


def test_constraints_are_regenerated_from_a_reports_records(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tiny, out) == 0
    (out / "constraints.txt").unlink()
    assert main(["env", str(out)]) == 0
    text = (out / "constraints.txt").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in text
    assert "from the provenance of 1 of 1 records" in text


def test_stack_differences_name_only_what_both_sides_record():
    old = stack_of({"torch": "2.15.0+cu132", "opacus": "1.6.0", "timm": "1.0.31"})
    new = stack_of({"torch": "2.14.1+cu130", "opacus": "1.6.0", "timm": "1.0.31", "cuda": "13.0"})
    assert differences(old, new) == ["torch 2.15.0+cu132 -> 2.14.1+cu130"]
    assert differences(new, new) == []
    assert constraints_text({"torch": "2.14.1+cu130", "timm": None}) == "torch==2.14.1\n"
