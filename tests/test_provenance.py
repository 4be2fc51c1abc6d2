"""Provenance: one capture whose record fields match the typed record, and the commit rule."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch

import bench.provenance
from bench.provenance import PACKAGES, RESULT_PACKAGES, environment_facts, record_provenance
from bench.results.record import Provenance
from bench.results.stacks import PINNED

ROOT = Path(__file__).resolve().parents[1]


def test_a_record_provenance_holds_exactly_the_typed_fields():
    prov = record_provenance(torch.device("cpu"))
    assert set(prov) == set(Provenance.__annotations__)
    assert prov["torch"] == torch.__version__
    assert prov["platform"] == platform.platform()


def test_records_environment_and_constraints_share_one_package_list():
    facts = environment_facts()
    prov = record_provenance(torch.device("cpu"))
    assert [k for k in facts if k in {p.lower() for p in PACKAGES}] == [p.lower() for p in PACKAGES]
    assert {k: prov[k] for k in PINNED} == {k: facts[k] for k in PINNED}
    assert list(PINNED) == [p.lower() for p in RESULT_PACKAGES]


def test_reading_the_package_list_loads_no_torch():
    code = "import sys, bench.provenance, bench.results.stacks; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_git_commit_is_dirty_for_code_changes_but_not_for_report_folders(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "bench").mkdir()
    (tmp_path / "reports" / "suite").mkdir(parents=True)
    (tmp_path / "bench" / "engine.py").write_text("x = 1\n")
    (tmp_path / "reports" / "suite" / "records.jsonl").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    monkeypatch.setattr(bench.provenance, "REPO", tmp_path)
    clean = bench.provenance.git_commit()
    assert clean is not None and not clean.endswith("-dirty")
    # a sweep appending to a committed report folder changes no result
    (tmp_path / "reports" / "suite" / "records.jsonl").write_text("{}\n{}\n")
    assert bench.provenance.git_commit() == clean
    (tmp_path / "bench" / "engine.py").write_text("x = 2\n")
    assert bench.provenance.git_commit() == clean + "-dirty"
