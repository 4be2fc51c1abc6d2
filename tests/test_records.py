"""Tests of the records file: atomic appends, bad lines reported by number, last record wins."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.errors import RecordsError
from bench.results.record import NUMERIC_FIELDS
from bench.results.records import append_record, finished_keys, read_records, superseded_path


def record(key: str, status: str = "ok", **fields: object) -> dict:
    return {"run_key": key, "status": status, **fields}


def test_append_then_read_round_trips_records(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "smoke" / "records.jsonl"
    written = [
        record("a", test_acc=0.5, seed=0, provenance={"torch": "2.6.0"}),
        record("b", "failed", error="CUDA out of memory", test_acc=None),
        record("c", "skipped", error="needs public data"),
    ]
    for r in written:
        append_record(path, r)
    read = read_records(path)
    assert read.records == written
    assert read.problems == []


def test_each_record_is_one_sorted_line_of_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, {"status": "ok", "run_key": "k", "b": 1, "a": 2})
    assert path.read_text() == '{"a": 2, "b": 1, "run_key": "k", "status": "ok"}\n'


def test_nan_and_inf_are_written_as_null(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, record("k", test_acc=math.nan, extra={"x": [math.inf, 1.0]}))
    line = path.read_text()
    # Strict parsing: json refuses NaN/Infinity only when asked to via parse_constant.
    parsed = json.loads(line, parse_constant=lambda name: pytest.fail(f"wrote {name}"))
    assert parsed["test_acc"] is None
    assert parsed["extra"] == {"x": [None, 1.0]}


def test_unserialisable_record_raises_and_leaves_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, record("a"))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        append_record(path, record("b", value=object()))
    assert path.read_bytes() == before


def test_interrupted_write_leaves_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, record("a"))
    before = path.read_bytes()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # stands in for a signal arriving just before the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        append_record(path, record("b"))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_sigkill_during_appends_never_leaves_a_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    padding = "x" * 20_000  # long lines widen the window in which a kill lands mid-write
    for attempt in range(3):
        pid = os.fork()
        if pid == 0:  # child: append until killed
            try:
                for i in range(10_000):
                    append_record(path, record(f"{attempt}-{i}", pad=padding))
            finally:
                os._exit(0)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if path.exists() and path.stat().st_size > 40_000 * (attempt + 1):
                break
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        read = read_records(path)
        assert read.problems == []
        assert all(r["pad"] == padding for r in read.records)
    assert len(read.records) >= 3


def test_append_after_a_truncated_line_keeps_the_new_record_whole(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"run_key": "a", "status": "ok"}\n{"run_key": "b", "sta')
    append_record(path, record("c"))
    read = read_records(path)
    assert [r["run_key"] for r in read.records] == ["a", "c"]
    assert len(read.problems) == 1 and ":2:" in read.problems[0]


def test_bad_lines_are_problems_with_line_numbers_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    lines = [
        json.dumps(record("a")),
        "garbage, not json",
        json.dumps(record("b")),
        "[1, 2]",
        json.dumps({"status": "ok"}),
        json.dumps(record("c", status="exploded")),
        "",
        json.dumps(record("d")),
        '{"run_key": "e", "status": "o',
    ]
    path.write_text("\n".join(lines))
    read = read_records(path)
    assert [r["run_key"] for r in read.records] == ["a", "b", "d"]
    assert read.problems[0].startswith(f"{path}:2: invalid JSON (")
    assert read.problems[1] == f"{path}:4: not a JSON object (got list)"
    assert read.problems[2] == f"{path}:5: missing required field(s): run_key"
    assert read.problems[3].startswith(f"{path}:6: status 'exploded' is not one of")
    assert read.problems[4].startswith(f"{path}:9: truncated or invalid JSON (")
    assert len(read.problems) == 5


def test_last_record_for_a_run_key_wins(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, record("a", "failed", error="oom"))
    append_record(path, record("b", test_acc=0.4))
    append_record(path, record("a", test_acc=0.7))  # a --force re-run
    read = read_records(path)
    assert [r["run_key"] for r in read.records] == ["b", "a"]
    assert read.records[1]["test_acc"] == 0.7


def test_missing_file_raises_records_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "records.jsonl"
    with pytest.raises(RecordsError, match=str(path)):
        read_records(path)


def test_finished_keys_holds_every_status_and_is_empty_without_a_file(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    assert finished_keys(path) == set()
    append_record(path, record("a"))
    append_record(path, record("b", "failed", error="boom"))
    append_record(path, record("c", "skipped", error="incompatible"))
    with path.open("a") as f:
        f.write("not json\n")
    assert finished_keys(path) == {"a", "b", "c"}


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


# Numeric fields must hold numbers (tests/test_results_package.py); any other field is free.
free_keys = st.text().filter(lambda key: key not in NUMERIC_FIELDS)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(extras=st.lists(st.dictionaries(free_keys, json_values, max_size=4), min_size=1, max_size=4))
def test_any_json_record_round_trips(tmp_path: Path, extras: list[dict]) -> None:
    path = tmp_path / f"records-{os.urandom(4).hex()}.jsonl"
    written = [{**extra, "run_key": f"k{i}", "status": "ok"} for i, extra in enumerate(extras)]
    for r in written:
        append_record(path, r)
    assert read_records(path).records == written


def test_a_rerun_replaces_its_run_keys_record_and_the_old_one_moves_to_superseded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, record("a", "failed", error="oom"))
    append_record(path, record("b", test_acc=0.4))
    with path.open("a") as f:
        f.write("not json\n")
    append_record(path, record("a", test_acc=0.7))  # a --retry-failed re-run
    lines = path.read_text().splitlines()
    assert [json.loads(x)["run_key"] for x in (lines[0], lines[2])] == ["b", "a"]
    assert lines[1] == "not json"  # not a record: left for read_records to report
    (old,) = superseded_path(path).read_text().splitlines()
    assert json.loads(old)["status"] == "failed"
    assert superseded_path(path) == tmp_path / "records.superseded.jsonl"


def test_a_record_left_in_both_files_by_a_kill_is_superseded_once(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, record("a", "failed", error="oom"))
    # Killed after the superseded file was written and before the records file was replaced.
    superseded_path(path).write_bytes(path.read_bytes())
    append_record(path, record("a", test_acc=0.7))
    assert len(superseded_path(path).read_text().splitlines()) == 1
    assert [r["test_acc"] for r in read_records(path).records] == [0.7]
