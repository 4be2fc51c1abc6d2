"""The command line: `list` shows the registry; user errors are one line and exit code 2."""

from __future__ import annotations

import re
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
