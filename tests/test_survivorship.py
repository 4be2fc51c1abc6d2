"""The leaderboard counts failed runs: ok / attempted per norm, ranks with failures at chance."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.results import figures
from bench.results.leaderboard import write_report
from tests.report_records import make_record, write_run


@pytest.fixture(autouse=True)
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "write_figures", lambda run_dir, points: None)


def survivorship_rows(text: str, backbone: str = "resnet9") -> dict[str, list[str]]:
    """Norm -> cells of the table under ``backbone``'s leaderboard that counts failed runs."""
    section = text.split(f"## Backbone `{backbone}`")[1].split("\n## ")[0]
    table = section.split("Failed runs counted at chance accuracy")[1]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_a_norm_whose_seeds_fail_ranks_below_a_stable_one_once_failures_count_at_chance(
    tmp_path: Path,
):
    """Ok runs only, the unstable norm's one survivor (90%) beats the stable norm (60%); with
    its two diverged seeds at chance (10%) it averages 36.67% and ranks second."""
    records = [make_record("resnet9", "stable", s, 0.6, num_classes=10) for s in range(3)]
    records += [make_record("resnet9", "unstable", 0, 0.9, num_classes=10)]
    records += [
        make_record("resnet9", "unstable", s, None, status="failed", diverged=True) for s in (1, 2)
    ]
    records += [make_record("resnet9", "refused", 0, None, status="skipped")]
    text = write_report(write_run(tmp_path, records)).read_text()
    assert "Failed runs counted at chance accuracy (10.00 %)" in text
    rows = survivorship_rows(text)
    assert rows["stable"] == ["3 / 3", "60.00", "60.00", "1"]
    assert rows["unstable"] == ["1 / 3", "90.00", "36.67", "2"]
    assert "refused" not in rows  # a skipped cell never started: not attempted


def test_chance_comes_from_the_config_when_no_record_names_the_classes(tmp_path: Path):
    config = {"data": {"source": "synthetic", "num_classes": 4}}
    records = [make_record("resnet9", "a", s, 0.5, config=config) for s in range(2)]
    records += [make_record("resnet9", "a", 2, None, status="failed", config=config)]
    rows = survivorship_rows(write_report(write_run(tmp_path, records)).read_text())
    assert rows["a"] == ["2 / 3", "50.00", "41.67", "1"]  # (0.5 + 0.5 + 0.25) / 3
