"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_suite import TINY


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """The tiny suite written to ``tmp_path / "tiny.yaml"``."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path
