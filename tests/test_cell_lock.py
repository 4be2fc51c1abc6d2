"""Two processes sharing an output folder never run one cell twice; a dead holder frees its lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter

from bench.results.records import read_records
from bench.sweep.lock import cell_lock, lock_path
from tests.tiny_suite import ROOT

_HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from bench.sweep.lock import cell_lock\n"
    "with cell_lock(Path(sys.argv[1]), 'k') as holder:\n"
    "    print('held' if holder is None else 'taken', flush=True)\n"
    "    time.sleep(600)\n"
)


def test_a_held_cell_lock_names_its_holder_and_is_gone_once_released(tmp_path):
    records = tmp_path / "records.jsonl"
    with cell_lock(records, "k") as first:
        assert first is None
        with cell_lock(records, "k") as second:
            assert second == f"{socket.gethostname()} pid {os.getpid()}"
        with cell_lock(records, "other") as third:
            assert third is None
    assert not lock_path(records, "k").exists()
    with cell_lock(records, "k") as again:
        assert again is None


def test_the_lock_of_a_killed_holder_is_taken_at_once(tmp_path):
    records = tmp_path / "records.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(records)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with cell_lock(records, "k") as busy:
            assert busy == f"{socket.gethostname()} pid {holder.pid}"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(records, "k").exists()  # left behind by the killed holder...
    with cell_lock(records, "k") as taken:
        assert taken is None  # ...and not stale: the kernel released it


def test_two_sweeps_into_one_folder_record_each_cell_once(tiny, tmp_path):
    """Two copies of one suite into one folder once gave 4 records for 2 cells."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "bench", "run", str(tiny), "--out", str(out), "--no-progress",
        "--set", "grid.seed=[0]", "--set", "training.measure_nonprivate=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    keys = Counter(r["run_key"] for r in read_records(out / "records.jsonl").records)
    assert len(keys) == 2 and set(keys.values()) == {1}, (keys, errors)
    assert not (out / "locks").exists()
