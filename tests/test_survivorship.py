"""The leaderboard counts failed runs: intention to treat in the primary table (failed runs at
chance), the ok runs alone in the per-protocol sensitivity table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.results import figures
from bench.results.leaderboard import write_report
from tests.report_records import make_record, write_run


@pytest.fixture(autouse=True)
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The points `write_report` hands the figures (none are drawn)."""
    points: list = []
    monkeypatch.setattr(figures, "write_figures", lambda run_dir, p, **_: points.extend(p))
    return points


def rows_of(table: str) -> dict[str, list[str]]:
    """Norm -> cells of a Markdown table's rows (the norm is the first code cell)."""
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        norm = next((c for c in cells if c.startswith("`")), None)
        if norm is not None:
            rows[norm.strip("`")] = cells
    return rows


def tables(text: str, backbone: str = "resnet9") -> tuple[dict, dict]:
    """The primary (intention-to-treat) table's rows and the per-protocol table's rows."""
    section = text.split(f"## Backbone `{backbone}`")[1].split("\n## ")[0]
    primary, _, per_protocol = section.partition("Per-protocol sensitivity")
    return rows_of(primary.split("\n\n**")[0]), rows_of(per_protocol)


def test_a_norm_whose_seeds_fail_ranks_below_a_stable_one_once_failures_count_at_chance(
    tmp_path: Path, drawn: list
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
    primary, per_protocol = tables(text)
    assert list(primary)[:2] == ["stable", "unstable"]  # best intention-to-treat mean first
    assert primary["unstable"][2].startswith("36.67 ± ") and "(n=3)" in primary["unstable"][2]
    assert per_protocol["unstable"][1:3] == ["1 / 3", "90.00 (n=1, no CI)"]
    assert per_protocol["stable"][1] == "3 / 3"
    assert "refused" not in per_protocol  # a skipped cell never started: not attempted
    # The figure plots what the primary table says, not the lone survivor.
    plotted = {p.norm: p for p in drawn}
    assert plotted["unstable"].acc_pct == pytest.approx(100 * (0.9 + 0.1 + 0.1) / 3)
    assert plotted["unstable"].throughput_img_s == 100.0  # measured on the ok run


def test_chance_comes_from_the_config_when_no_record_names_the_classes(tmp_path: Path):
    config = {"data": {"source": "synthetic", "num_classes": 4}}
    records = [make_record("resnet9", "a", s, 0.5, config=config) for s in range(2)]
    records += [make_record("resnet9", "a", 2, None, status="failed", config=config)]
    primary, _ = tables(write_report(write_run(tmp_path, records)).read_text())
    assert primary["a"][2].startswith("41.67 ± ")  # (0.5 + 0.5 + 0.25) / 3


def test_without_known_chance_failed_runs_are_left_out_and_the_report_says_so(tmp_path: Path):
    records = [make_record("resnet9", "a", s, 0.5) for s in range(2)]
    records += [make_record("resnet9", "a", 2, None, status="failed")]
    text = write_report(write_run(tmp_path, records)).read_text()
    primary, _ = tables(text)
    assert "(n=2)" in primary["a"][2] and primary["a"][11].startswith("1/3 ")
    assert "Chance accuracy is unknown" in text
