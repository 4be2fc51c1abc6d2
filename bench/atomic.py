"""Atomic file writes: a kill at any point leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TMP_SUFFIX = ".tmp"


def write_with(path: Path, writer: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` by calling ``writer`` on a temporary file, then renaming it over ``path``.

    The temporary file has a unique name in ``path``'s folder (so two writers never share one
    and the rename stays on one filesystem); it is flushed and fsynced before ``os.replace``,
    and the folder is fsynced after it, so the new file survives a power cut. When ``writer``
    raises, the temporary file is removed and ``path`` is untouched. Parent folders are
    created.

    Args:
        path: The file to write.
        writer: Writes the whole content to the binary file it is given, e.g.
            ``lambda f: torch.save(obj, f)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `write_with`)."""
    write_with(path, lambda f: f.write(data))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 encoded (see `write_with`)."""
    write_bytes(path, text.encode("utf-8"))


def stray_temporaries(path: Path) -> list[Path]:
    """The temporary files that writers of ``path`` killed mid-write left beside it."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"))


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable across a power cut (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)
