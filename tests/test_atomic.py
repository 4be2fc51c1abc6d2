"""The atomic writer: all or nothing, no temporary file left, unique temporary names."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench import atomic

ROOT = Path(__file__).resolve().parents[1]


def test_a_write_replaces_the_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    atomic.write_text(path, "old\n")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_a_writer_that_raises_leaves_the_target_untouched_and_no_temporary(tmp_path: Path):
    path = tmp_path / "state.pt"
    atomic.write_bytes(path, b"before")

    def half_then_fail(f) -> None:
        f.write(b"torn")
        raise KeyboardInterrupt  # stands in for a signal arriving mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic.write_with(path, half_then_fail)
    assert path.read_bytes() == b"before"
    assert list(tmp_path.iterdir()) == [path]
    assert atomic.stray_temporaries(path) == []


def test_two_writers_in_one_folder_never_share_a_temporary(tmp_path: Path) -> None:
    path = tmp_path / "shared.txt"
    inside = threading.Barrier(2)
    seen: list[str] = []

    def writer(f) -> None:
        seen.append(f.name)
        inside.wait(timeout=10)  # both temporaries exist at once
        f.write(b"x")

    threads = [threading.Thread(target=atomic.write_with, args=(path, writer)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2
    assert path.read_bytes() == b"x"
    assert atomic.stray_temporaries(path) == []


def test_stray_temporaries_are_those_of_the_path_only(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torn = tmp_path / ".checkpoint.pt.abc123.tmp"
    torn.write_bytes(b"half")
    (tmp_path / ".other.pt.abc123.tmp").write_bytes(b"half")
    assert atomic.stray_temporaries(path) == [torn]


def test_the_atomic_writer_is_torch_free() -> None:
    code = "import sys, bench.atomic; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
