"""Tests that run alone under pytest-xdist: a readers-writer lock over one run's workers.

CI runs the tests on two xdist workers (``pytest -n 2``). Most tests are small and share the
two cores well; a few would not: time-boxed rehearsals (the GPU window, the gpu-report) whose
boxes are sized for an idle machine, and tests that start several processes (ranks, worker
pools, SLURM's local executor, killed and resumed sweeps). Those are marked ``alone`` (by
module in `ALONE_MODULES`, or with ``@pytest.mark.alone``) and run with no other test beside
them: every test holds a shared lock on one file per test run while it runs, an ``alone`` test
an exclusive one. A worker that wants the exclusive lock first leaves an intent file, and the
other workers start no shared test while one is there, so the ``alone`` test waits for the
running test only, not for a stream of new ones. xdist has no such mode (``--dist loadgroup``
puts a group on one worker, not alone on the machine), so it is written here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

#: Modules whose every test runs alone: time boxes, or several processes per test.
ALONE_MODULES = (
    "tests/perf/test_gpu_window.py",
    "tests/perf/test_gpu_report.py",
    "tests/test_distributed.py",
    "tests/test_resume.py",
    "tests/test_runner.py",
    "tests/test_cell_lock.py",
    "tests/test_quickstart.py",
    "tests/test_protocol.py",
)
#: Seconds a worker waits for another's intent to go before it runs anyway (a worker that
#: died holding an intent must not stop the run).
INTENT_WAIT_S = 900.0


def _folder(run: str) -> Path:
    """The lock folder of the xdist run ``run`` (its test-run uid)."""
    folder = Path(tempfile.gettempdir()) / f"bench-tests-{run}"
    folder.mkdir(exist_ok=True)
    return folder


def _threads(alone: bool, workers: int) -> int:
    """Torch threads for a test on this worker: every core for an ``alone`` test, else the
    worker's share (two workers of torch's default pool each would oversubscribe the cores,
    and torch's threads spin while they wait for each other)."""
    cores = os.cpu_count() or 1
    return cores if alone else max(1, cores // max(1, workers))


@contextlib.contextmanager
def running(alone: bool, workerinput: Mapping[str, Any] | None) -> Iterator[None]:
    """Hold this worker's share of the machine while one test runs: the exclusive lock for
    an ``alone`` test, else a shared one once no other worker waits to run alone.

    ``workerinput`` is the pytest config's (xdist gives it to its workers only); None: not an
    xdist worker, nothing to lock. Read from the config, not the environment: a test's own
    pytest subprocess (the GPU window's tests stage) inherits the worker's ``PYTEST_XDIST_*``
    variables, and locking there would wait on its own parent's exclusive lock.
    """
    if workerinput is None:
        yield
        return
    folder = _folder(str(workerinput["testrunuid"]))
    torch.set_num_threads(_threads(alone, int(workerinput["workercount"])))
    worker = str(workerinput["workerid"])
    intent = folder / f"intent-{worker}"
    if alone:
        intent.touch()
    else:
        deadline = time.monotonic() + INTENT_WAIT_S
        while time.monotonic() < deadline and any(
            p.name != intent.name for p in folder.glob("intent-*")
        ):
            time.sleep(0.05)
    with (folder / "lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            intent.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)
