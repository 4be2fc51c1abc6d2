"""The header says what a seeded run's epsilon covers and which records share streams (issue
26, items 3 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.results.leaderboard import leaderboard_text
from bench.seeds import STREAM_SCHEME
from tests.report_records import make_record, write_run

SEEDED = (
    "The training procedure is (ε, δ)-DP when its randomness is secret; these runs use "
    "published seeds so anyone can reproduce them, and are measurements of the procedure, not "
    "private releases."
)


def _board(tmp_path: Path, *fields: dict) -> str:
    """The leaderboard of two seeds of two norms, the i-th norm's records given ``fields[i]``."""
    records = [
        make_record("resnet9", norm, seed, 0.4 + seed / 100, **extra)
        for norm, extra in zip(("group_norm", "layer_norm"), fields, strict=True)
        for seed in (0, 1)
    ]
    records.append(make_record("resnet9", "group_norm", 2, None, status="failed"))
    return leaderboard_text(write_run(tmp_path / "run", records))


def _header(board: str) -> str:
    return board.split("\n## ", 1)[0]


@pytest.mark.parametrize(
    "seeded",
    [{"secure_noise": False}, {}],  # absent: records before the field were all seeded
    ids=["secure_noise-false", "no-field"],
)
def test_seeded_runs_say_what_their_epsilon_covers_and_that_they_predate_per_cell_streams(
    tmp_path, seeded
):
    header = _header(_board(tmp_path, seeded, seeded))
    assert "- **Seeded runs:** every run drew noise and sampling from" in header
    assert SEEDED in header
    assert "- **Shared streams:** the records of every run predate per-cell secret" in header
    assert "**Secure noise:**" not in header


def test_per_cell_streams_and_secure_noise_are_told_apart_by_their_records(tmp_path):
    new = {"secure_noise": False, "stream_scheme": STREAM_SCHEME}
    secure = {"secure_noise": True, "stream_scheme": STREAM_SCHEME}
    header = _header(_board(tmp_path, new, secure))
    assert "- **Seeded runs:** 2 of 4 runs drew noise and sampling" in header and SEEDED in header
    assert "- **Secure noise:** 2 of 4 runs drew noise and sampling from the operating" in header
    assert "Shared streams" not in header
    old = {"secure_noise": False}
    header = _header(_board(tmp_path / "mixed", new, old))
    assert "- **Shared streams:** the records of 2 of 4 runs predate" in header


def test_runs_that_all_drew_secure_noise_make_no_seeded_claim(tmp_path):
    secure = {"secure_noise": True, "stream_scheme": STREAM_SCHEME}
    header = _header(_board(tmp_path, secure, secure))
    assert "- **Secure noise:** every run drew" in header
    assert "Seeded runs" not in header and SEEDED not in header
