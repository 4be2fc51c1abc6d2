"""A publisher's files under ``data.root``: found, checksum-verified, or fetched by torchvision."""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.config import DataConfig
from bench.errors import DataError

_CHUNK = 1 << 20


def find_files(
    cfg: DataConfig,
    names: Sequence[str],
    label: str,
    how_to_get: str,
    subdirs: Sequence[str] = (),
) -> list[Path] | None:
    """The paths of ``names`` in ``data.root`` or one of its ``subdirs`` (torchvision's
    layout), all in the same folder; None when some are missing and ``data.download`` is on.

    Raises:
        DataError: One line naming the folders looked in and how to get the files.
    """
    if cfg.root is None:
        raise DataError(f"{label}: data.root is required ({how_to_get})")
    root = Path(cfg.root)
    folders = [root, *(root / s for s in subdirs)]
    for folder in folders:
        if all((folder / n).is_file() for n in names):
            return [folder / n for n in names]
    if cfg.download:
        return None
    looked = ", ".join(str(f) for f in folders)
    raise DataError(f"{label}: {', '.join(names)} not found in {looked}; {how_to_get}")


def verify(cfg: DataConfig, path: Path, md5: str | None) -> None:
    """Check ``path`` against the MD5 its publisher (as torchvision lists it) gives, unless
    ``data.verify_checksum`` is false or no checksum is published.

    Why MD5: it is the digest the publishers and torchvision list for these files; it guards
    against truncated or wrong files, not against tampering.

    Raises:
        DataError: Naming the file, the digest found and the one expected.
    """
    if not cfg.verify_checksum or md5 is None:
        return
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != md5:
        raise DataError(
            f"{path}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5}); fetch the "
            "file again, or set data.verify_checksum: false for a private copy"
        )


def find_or_download(
    cfg: DataConfig,
    names: Sequence[str],
    label: str,
    how_to_get: str,
    subdirs: Sequence[str],
    fetch: Callable[[], object],
) -> list[Path]:
    """`find_files`; where they are missing and ``data.download`` is on, run ``fetch`` (a
    torchvision dataset constructor with ``download=True``) and look again.

    Raises:
        DataError: The files are missing (one line), or the download failed.
    """
    paths = find_files(cfg, names, label, how_to_get, subdirs)
    if paths is not None:
        return paths
    try:
        fetch()
    except (RuntimeError, OSError, urllib.error.URLError) as err:
        raise DataError(
            f"{label}: download failed ({err}); copy the publisher's files into data.root instead"
        ) from None
    offline = dataclasses.replace(cfg, download=False)  # now a missing file is an error
    return find_files(offline, names, label, how_to_get, subdirs) or []
