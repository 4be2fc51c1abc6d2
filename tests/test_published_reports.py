"""Every committed leaderboard is what `bench report` builds from its committed records today."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from bench.results.leaderboard import leaderboard_text

REPORTS = Path(__file__).resolve().parents[1] / "reports"
PUBLISHED = sorted(p.parent for p in REPORTS.glob("*/records.jsonl"))


def test_there_are_published_reports_to_check():
    assert len(PUBLISHED) >= 6


@pytest.mark.parametrize("run_dir", PUBLISHED, ids=lambda p: p.name)
def test_published_leaderboard_rebuilds_byte_for_byte(run_dir: Path):
    """A change to the report code that moves a published number or sentence must rebuild the
    leaderboards in the same commit (`python -m bench report reports/<suite>`)."""
    committed = (run_dir / "leaderboard.md").read_text(encoding="utf-8")
    assert leaderboard_text(run_dir) == committed


@pytest.mark.parametrize(
    ("name", "shuffle_seed"), [("cifar10_cpu_eps8", 2), ("cifar10_cpu_prune", 1)]
)
def test_a_leaderboard_does_not_depend_on_the_order_of_its_records(
    name: str, shuffle_seed: int, tmp_path: Path
):
    """The same records in another order give the same page: these two orders once moved a
    printed digit (sums over seeds and least-squares rows taken in records-file order)."""
    source = REPORTS / name
    lines = (source / "records.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(shuffle_seed).shuffle(lines)
    copy = tmp_path / name
    copy.mkdir()
    (copy / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(source / "suite.json", copy / "suite.json")
    if (source / "predictions").is_dir():  # the test-set resampling reads them
        shutil.copytree(source / "predictions", copy / "predictions")
    assert leaderboard_text(copy) == leaderboard_text(source)
