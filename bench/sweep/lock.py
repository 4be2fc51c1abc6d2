"""One process per cell: a lock per run key in the output folder, freed when its holder dies.

Two sweeps into one folder (two terminals, two SLURM submissions of one suite) once both ran
every cell. A cell now runs only inside `cell_lock`: an advisory ``flock`` on
``<out>/locks/<run_key>.lock``. The kernel releases a ``flock`` when its holder exits or is
killed, so a lock cannot go stale: a file left behind by a dead holder is locked again at once
by the next process. Written here rather than taken from ``filelock`` (installed with torch, not
a declared dependency) because it is ``flock`` plus the one step below, as the records file's
writer lock (`bench.results.records`) already is.

The ranks of one launched cell (torchrun, a SLURM job of several tasks) run it together:
rank 0 alone takes the lock, for all of them, and tells the others whether to run
(`bench.sweep.cell.run_cell`); across nodes the out folder must be on a file system where
``flock`` holds between machines (NFS since Linux 2.6.12, Lustre mounted with ``flock``).

The holder deletes the file before unlocking it. A process that opened the file just before
that holds a lock on a deleted file, so after locking, each process checks that the path still
names the file it locked, and starts over when it does not.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, cells are not locked
    fcntl = None  # type: ignore[assignment]

FOLDER = "locks"

#: Written into the locks folder so that git never picks up a lock file.
GITIGNORE = "# Written by bench: per-cell lock files of running sweeps.\n*\n"


def lock_path(records_path: Path, run_key: str) -> Path:
    """Where the lock of the cell ``run_key`` of the sweep writing ``records_path`` lives."""
    return Path(records_path).parent / FOLDER / f"{run_key}.lock"


@contextlib.contextmanager
def cell_lock(records_path: Path, run_key: str) -> Iterator[str | None]:
    """Hold the cell's lock for the ``with`` block, if no other process holds it.

    Yields:
        None when this process holds the lock (the cell may run); otherwise what the holder
        wrote (host and process id), and the block must not run the cell.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield None
        return
    path = lock_path(records_path, run_key)
    fd, holder = _acquire(path)
    if fd is None:
        yield holder
        return
    try:
        yield None
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while locked: see the module docstring
        os.close(fd)
        _remove_folder_if_unused(path.parent)


def _remove_folder_if_unused(folder: Path) -> None:
    """Remove the locks folder and its ``.gitignore`` when no lock file is left in it (a
    process that takes a lock meanwhile keeps the folder: ``rmdir`` refuses a non-empty one)."""
    if any(folder.glob("*.lock")):
        return
    with contextlib.suppress(OSError):
        (folder / ".gitignore").unlink()
        folder.rmdir()


def _acquire(path: Path) -> tuple[int | None, str | None]:
    """``(fd, None)`` with the lock held on ``fd``, or ``(None, holder)`` when it is taken."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        ignore = path.parent / ".gitignore"
        if not ignore.exists():
            with contextlib.suppress(OSError):
                ignore.write_text(GITIGNORE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a holder leaving: try again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip()
            os.close(fd)
            return None, holder or "another process"
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())
            return fd, None
        os.close(fd)  # locked a file its holder had just deleted: take the new one
