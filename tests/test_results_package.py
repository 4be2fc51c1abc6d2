"""Tests of bench.results as a package: torch-free, a typed record that covers what runs write."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import bench.results
from bench.results import figures
from bench.results.leaderboard import write_report
from bench.results.record import (
    NUMERIC_FIELDS,
    REQUIRED_FIELDS,
    PrivacyCharge,
    Provenance,
    Record,
    check_record,
)
from bench.results.records import read_records

REPO = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
RESULTS_DIR = REPO / "bench" / "results"
RESULTS_MODULES = sorted(str(p.relative_to(RESULTS_DIR)) for p in RESULTS_DIR.rglob("*.py"))

#: Field names tools outside the project may rely on (ARCHITECTURE.md, "Records").
STABLE_FIELDS = (
    "run_key",
    "suite",
    "backbone",
    "norm",
    "seed",
    "status",
    "error",
    "test_acc",
    "throughput_img_s",
    "nonprivate_throughput_img_s",
    "peak_mem_bytes",
    "device",
    "epsilon_target",
    "epsilon_spent",
    "delta",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "wall_s",
)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True
    )


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", RESULTS_MODULES)
def test_no_results_module_imports_torch_even_lazily(module: str) -> None:
    """Static: catches an import of torch inside a function, which importing does not run."""
    assert "torch" not in imported_top_level_names(RESULTS_DIR / module)


def test_whole_package_imports_and_renders_the_golden_report_without_torch(
    tmp_path: Path,
) -> None:
    for name in ("records.jsonl", "suite.json"):
        shutil.copy(GOLDEN / name, tmp_path / name)
    code = """
import importlib, pkgutil, sys
from pathlib import Path
import bench.results
for info in pkgutil.walk_packages(bench.results.__path__, "bench.results."):
    importlib.import_module(info.name)
for name in bench.results.__all__:
    getattr(bench.results, name)
print(bench.results.write_report(Path(sys.argv[1])))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
sys.exit(f"torch modules loaded: {loaded[:5]}" if loaded else 0)
"""
    result = run_python(code, str(tmp_path))
    assert result.returncode == 0, result.stderr
    leaderboard = Path(result.stdout.strip())
    assert leaderboard.read_text() == (GOLDEN / "leaderboard.md").read_text()
    assert (tmp_path / "accuracy.png").exists()


def test_appending_records_does_not_import_the_statistics() -> None:
    """The runner imports the records module at startup; scipy's import costs over a second."""
    code = (
        "import sys; from bench.results import append_record, finished_keys; "
        "sys.exit(sorted({'scipy', 'tabulate', 'matplotlib'} & set(sys.modules)) or 0)"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_every_public_name_of_the_package_resolves() -> None:
    for name in bench.results.__all__:
        assert getattr(bench.results, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = bench.results.nope


def test_record_declares_the_stable_and_numeric_fields() -> None:
    fields = typing.get_type_hints(Record)
    assert set(STABLE_FIELDS) <= set(fields)
    assert set(NUMERIC_FIELDS) <= set(fields)
    assert set(REQUIRED_FIELDS) <= set(fields)
    assert len(set(NUMERIC_FIELDS)) == len(NUMERIC_FIELDS)


def test_every_field_in_the_record_source_has_a_comment_giving_its_meaning() -> None:
    source = (RESULTS_DIR / "record.py").read_text().splitlines()
    declared = {
        **Record.__annotations__,
        **Provenance.__annotations__,
        **PrivacyCharge.__annotations__,
    }
    for name in declared:
        lines = [line for line in source if line.strip().startswith(f"{name}:")]
        assert lines and all("  # " in line for line in lines), name


def dict_keys(node: ast.AST) -> set[str]:
    return {
        k.value
        for d in ast.walk(node)
        if isinstance(d, ast.Dict)
        for k in d.keys
        if isinstance(k, ast.Constant) and isinstance(k.value, str)
    }


def function(path: Path, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{path} has no function {name}")


def written_fields() -> set[str]:
    """Every top-level field the runner and training put into a record, read from source."""
    runner, record = REPO / "bench" / "sweep" / "cell.py", REPO / "bench" / "train" / "record.py"
    fields = dict_keys(function(runner, "_base_record"))
    run_cell = function(runner, "run_cell")
    fields |= dict_keys(run_cell)
    fields |= {
        kw.arg
        for call in ast.walk(run_cell)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "update"
        for kw in call.keywords
        if kw.arg
    }
    for node in ast.walk(ast.parse(record.read_text())):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
            fields |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return fields


def test_record_type_lists_every_field_the_runner_and_engine_write() -> None:
    fields = written_fields()
    assert set(STABLE_FIELDS) <= fields  # the source walk found the records
    assert fields - set(Record.__annotations__) == set()


def test_every_numeric_field_is_one_a_run_writes() -> None:
    assert set(NUMERIC_FIELDS) <= written_fields()


@pytest.mark.parametrize("value", [0, 0.5, 1, None], ids=repr)
def test_check_record_accepts_finite_numbers_and_null(value: object) -> None:
    record = {"run_key": "k", "status": "ok", **dict.fromkeys(NUMERIC_FIELDS, value)}
    assert check_record(record) is None


@pytest.mark.parametrize("value", ["0.5", True, math.nan, math.inf, [0.5], {"top1": 0.5}], ids=repr)
def test_check_record_refuses_a_non_number_in_a_numeric_field(value: object) -> None:
    problem = check_record({"run_key": "k", "status": "ok", "test_acc": value})
    assert problem == f"test_acc must be a finite number or null (got {value!r})"


def test_check_record_leaves_fields_it_does_not_know_alone() -> None:
    assert check_record({"run_key": "k", "status": "ok", "my_tool_note": "0.5"}) is None


def test_read_records_reports_a_non_numeric_test_acc_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    lines = [
        {"run_key": "a", "status": "ok", "test_acc": 0.6},
        {"run_key": "b", "status": "ok", "test_acc": "0.5"},
        {"run_key": "c", "status": "ok", "test_acc": 0.7, "wall_s": "NaN"},
    ]
    # json reads NaN although this project never writes it.
    nan_line = '{"run_key": "d", "status": "ok", "test_acc": NaN}\n'
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + nan_line)
    read = read_records(path)
    assert [r["run_key"] for r in read.records] == ["a"]
    assert read.problems == [
        f"{path}:2: test_acc must be a finite number or null (got '0.5')",
        f"{path}:3: wall_s must be a finite number or null (got 'NaN')",
        f"{path}:4: test_acc must be a finite number or null (got nan)",
    ]


def test_leaderboard_lists_a_non_numeric_accuracy_as_a_problem_of_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figures, "write_figures", lambda run_dir, points, **_: [])
    good = {"run_key": "a", "status": "ok", "backbone": "resnet9", "norm": "group_norm"}
    lines = [{**good, "seed": 0, "test_acc": 0.6}, {**good, "run_key": "b", "test_acc": "0.5"}]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = write_report(tmp_path).read_text()
    assert "- records.jsonl:2: test_acc must be a finite number or null (got '0.5')" in text
    assert "60.00 (n=1, no CI)" in text


def test_the_architecture_note_lists_exactly_the_stable_fields():
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## Records: the stable field names", 1)[1]
    spans = section.split("`")[1::2]
    listed = next(span for span in spans if span.startswith("run_key,"))
    assert [name.strip() for name in listed.split(",")] == list(STABLE_FIELDS)
