"""Every committed leaderboard is what `bench report` builds from its committed records today."""

from __future__ import annotations

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
