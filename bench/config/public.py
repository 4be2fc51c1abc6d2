"""Configs as records publish them: JSON values, and paths that reveal no absolute path."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from bench.config.sections import DataConfig


def public_path(path: str | None) -> str | None:
    """A path as a published record or report may show it: relative to the home directory
    (``~/data/x``) or to the current directory (``data/x``), else only its last component
    (``…/x``), so that no absolute path of the machine that made it is published."""
    if path is None or not os.path.isabs(path):
        return path
    path = os.path.normpath(path)
    for base, prefix in ((os.path.expanduser("~"), "~"), (os.getcwd(), "")):
        base = os.path.normpath(base)
        if base != os.sep and (path == base or path.startswith(base + os.sep)):
            rel = os.path.relpath(path, base)
            if not prefix:
                return rel
            return prefix if rel == "." else f"{prefix}/{rel}"
    return "…/" + os.path.basename(path)


def public_data_dict(data: DataConfig) -> dict[str, Any]:
    """`data_to_dict` with its paths made public (`public_path`), for records and reports."""
    out = data_to_dict(data)
    for name in ("root", "cache_dir"):
        out[name] = public_path(out[name])
    return out


_PATH_KEYS = ("data.root", "data.cache_dir")


def public_value(key: str, value: Any) -> Any:
    """A grid value, with a data path made public."""
    if key in _PATH_KEYS and isinstance(value, str):
        return public_path(os.path.expanduser(value))
    return value


def public_set(item: str) -> str:
    """A ``--set key=value`` string, with a data path made public."""
    key, sep, value = item.partition("=")
    if sep and key.strip() in _PATH_KEYS:
        return f"{key}={public_path(os.path.expanduser(value.strip()))}"
    return item


def data_to_dict(data: DataConfig) -> dict[str, Any]:
    """The data config as JSON with per-source defaults filled in, so equal data gives equal
    dicts."""
    out = jsonable(dataclasses.asdict(data))
    out.update(dataset=data.dataset_name, num_train=data.train_size, num_test=data.test_size)
    return out


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses as dicts and tuples as lists, as JSON holds them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
