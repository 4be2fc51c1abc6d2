"""Packing a GPU window's results into the few files a device machine returns, and back."""

from __future__ import annotations

import re
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bench import atomic
from bench.errors import UsageError

#: Sub-folders of a report folder that never leave the device: checkpoints hold un-noised
#: losses (and, with secure noise, secret stream states); saved weights are large.
EXCLUDED_DIRS = frozenset({"checkpoints", "models", "__pycache__"})
#: The tarball's name; over the size limit it is split into ``NAME.00``, ``NAME.01``, ...
TARBALL = "gpu_window.tar.gz"


@dataclass(frozen=True)
class Limits:
    """What a device machine returns from its output folder (its README, "Limits").

    Attributes:
        max_files: Files at most.
        max_file_bytes: Bytes per file, at most.
        max_total_bytes: Bytes of all files together, at most.
        max_depth: Folders below the output folder a file may lie in.
        name: Pattern every file and folder name must match.
    """

    max_files: int = 8
    max_file_bytes: int = 16 * 2**20 - 2**16  # strictly under 16 MiB
    max_total_bytes: int = 64 * 2**20
    max_depth: int = 2
    name: re.Pattern[str] = re.compile(r"^[A-Za-z0-9._-]+$")


DEVICE_LIMITS = Limits()


def problems(out: Path, limits: Limits = DEVICE_LIMITS) -> list[str]:
    """Every way the files under ``out`` break ``limits``; empty when they all come back."""
    found: list[str] = []
    files = [p for p in sorted(out.rglob("*")) if not p.is_dir()]
    if len(files) > limits.max_files:
        found.append(f"{len(files)} files, more than {limits.max_files}")
    total = 0
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        if not limits.name.match(p.name):
            found.append(f"{rel}: name has characters other than letters, digits, '.', '_', '-'")
        if p.is_symlink() or not (p.is_dir() or p.is_file()):
            found.append(f"{rel}: not a plain file or folder")
            continue
        if p.is_dir():
            continue
        if len(rel.parts) - 1 > limits.max_depth:
            found.append(f"{rel}: {len(rel.parts) - 1} folders deep, more than {limits.max_depth}")
        size = p.stat().st_size
        total += size
        if size > limits.max_file_bytes:
            found.append(f"{rel}: {size} bytes, more than {limits.max_file_bytes}")
    if total > limits.max_total_bytes:
        found.append(f"{total} bytes in all, more than {limits.max_total_bytes}")
    return found


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave excluded folders, hidden files (the records' lock), links and special files out of
    the tarball."""
    parts = Path(info.name).parts
    if EXCLUDED_DIRS.intersection(parts) or any(p.startswith(".") for p in parts):
        return None
    return info if info.isfile() or info.isdir() else None


def _tail(src: Path, dest: Path, max_bytes: int) -> None:
    """Copy ``src`` to ``dest``, keeping only its last ``max_bytes`` (with a note) when larger."""
    data = src.read_bytes()
    if len(data) > max_bytes:
        note = f"[... first {len(data) - max_bytes + 200} bytes cut to fit the size limit ...]\n"
        data = note.encode() + data[-(max_bytes - 200) :]
    atomic.write_bytes(dest, data)


def pack(
    out: Path,
    folders: dict[str, Path],
    loose: list[Path],
    limits: Limits = DEVICE_LIMITS,
) -> list[Path]:
    """Write ``folders`` (archive name -> folder) as one tarball, split into pieces where it
    exceeds the file-size limit, and copy ``loose`` files (their tails where too large) into
    ``out``.

    Returns:
        The files written, tarball pieces first.

    Raises:
        UsageError: When the result still breaks ``limits`` (too many pieces, a bad name).
    """
    out.mkdir(parents=True, exist_ok=True)
    whole = out / TARBALL

    def write_tar(f) -> None:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:
            for name, folder in folders.items():
                if folder.is_dir():
                    tar.add(folder, arcname=name, filter=_keep)

    atomic.write_with(whole, write_tar)
    written = [whole]
    if whole.stat().st_size > limits.max_file_bytes:
        written = []
        with whole.open("rb") as f:
            for i, chunk in enumerate(iter(lambda: f.read(limits.max_file_bytes), b"")):
                piece = out / f"{TARBALL}.{i:02d}"
                atomic.write_bytes(piece, chunk)
                written.append(piece)
        whole.unlink()
    for src in loose:
        if src.is_file():
            _tail(src, out / src.name, limits.max_file_bytes)
            written.append(out / src.name)
    found = problems(out, limits)
    if found:
        raise UsageError(f"{out}: the results do not fit what a device returns: {'; '.join(found)}")
    return written


def tarball_pieces(files_dir: Path) -> list[Path]:
    """The tarball in ``files_dir``: whole, or its numbered pieces in order."""
    whole = files_dir / TARBALL
    if whole.is_file():
        return [whole]
    pieces = sorted(files_dir.glob(f"{TARBALL}.[0-9][0-9]"))
    if not pieces:
        raise UsageError(f"{files_dir}: no {TARBALL} (nor its pieces {TARBALL}.00, ...)")
    return pieces


def extract(files_dir: Path, dest: Path) -> list[str]:
    """Join the tarball's pieces and extract it (regular files and folders only) into
    ``dest``; returns its top-level folders."""
    dest.mkdir(parents=True, exist_ok=True)
    joined = dest / ".joined.tar.gz"
    with joined.open("wb") as w:
        for piece in tarball_pieces(files_dir):
            with piece.open("rb") as r:
                shutil.copyfileobj(r, w)
    try:
        with tarfile.open(joined, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UsageError(f"{files_dir}: cannot read the results' tarball ({err})") from None
    finally:
        joined.unlink()
    return sorted(p.name for p in dest.iterdir() if p.is_dir())
