"""The command line: `list` shows the registry; user errors are one line and exit code 2."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import norms
from bench.backbones import list_backbones
from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_list_shows_every_norm_and_backbone(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in norms.list_norms() + list_backbones())
    assert "Norms (6)" in out and "Backbones (4)" in out


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_readme_test_command_is_the_one_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^pytest .*$", ci, re.M).group(0)
    assert command in readme


def test_an_unreachable_epsilon_is_one_line_naming_the_file_and_key(capsys, tmp_path):
    suite = str(ROOT / "suites" / "smoke.yaml")
    code = main(
        ["run", suite, "--set", "privacy.epsilon=1000", "--dry-run", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {suite}: privacy: epsilon=1000.0 needs a noise multiplier")
    assert not any(tmp_path.iterdir())  # nothing written


def run_report(*args: str) -> subprocess.CompletedProcess:
    """`bench report` in a fresh interpreter; its last stdout line says whether torch loaded."""
    code = (
        "import sys\n"
        "from bench.cli import main\n"
        "try:\n"
        "    code = main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "report", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_report_never_imports_torch_on_success(tmp_path):
    shutil.copy(ROOT / "reports" / "smoke" / "records.jsonl", tmp_path / "records.jsonl")
    proc = run_report(str(tmp_path), "--baseline", "group_norm[num_groups=16]")
    assert proc.stdout.splitlines()[-1] == "0 False", proc.stderr
    assert (tmp_path / "leaderboard.md").exists()


def test_report_never_imports_torch_on_an_error(tmp_path):
    proc = run_report(str(tmp_path / "missing"))
    assert proc.stdout.splitlines()[-1] == "2 False", proc.stderr
    assert proc.stderr.startswith("error: records file not found")


def test_a_baseline_naming_no_recorded_norm_is_one_line_listing_the_norms_present(capsys, tmp_path):
    shutil.copy(ROOT / "reports" / "smoke" / "records.jsonl", tmp_path / "records.jsonl")
    assert main(["report", str(tmp_path), "--baseline", "group_norm[num_groups=4]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: --baseline: the baseline matches no norm of the records")
    assert "allowed: dp_batch_norm[stats=public], group_norm, kernel_norm, layer_norm" in err
    assert err.endswith("(did you mean 'group_norm'?)")
    assert not (tmp_path / "leaderboard.md").exists()
