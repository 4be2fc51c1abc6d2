"""Per-example test predictions of final runs, beside the records: one byte per test example.

A final run writes ``<records folder>/predictions/<run_key>.u8`` (``.u16`` above 256 classes):
the class it predicted for each test example, in the test set's order, and once per test set
``labels-<sha256 prefix>.u8``, the true classes. Both are public (the test set is not private
data). The record's ``predictions`` field names the files with their SHA-256, so that the report
can add the test examples' sampling error to the seeds' (`bench.results.stats.testset`) and
check that the bytes are the ones the run wrote. Torch-free: the training side hands over plain
bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench import atomic

#: The folder beside ``records.jsonl``.
FOLDER = "predictions"


def dtype_for(num_classes: int) -> np.dtype:
    """The narrowest unsigned integer that holds every class index."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype("<u2")


def _suffix(dtype: np.dtype) -> str:
    return f".u{dtype.itemsize * 8}"


def write(
    folder: Path, run_key: str, predicted: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, Any]:
    """Write a run's predictions (and the labels, when not there yet) atomically.

    Args:
        folder: The predictions folder (``<records folder>/predictions``).
        run_key: The run's key (the file's name).
        predicted: Predicted class per test example, in the test set's order.
        labels: True class per test example, the same order.
        num_classes: Classes of the data (the file's integer width).

    Returns:
        The record's ``predictions`` field: paths relative to the records folder, SHA-256s,
        the example count and the integer type.
    """
    dtype = dtype_for(num_classes)
    pred = np.ascontiguousarray(predicted, dtype=dtype).tobytes()
    true = np.ascontiguousarray(labels, dtype=dtype).tobytes()
    true_sha = hashlib.sha256(true).hexdigest()
    labels_name = f"labels-{true_sha[:16]}{_suffix(dtype)}"
    if not (folder / labels_name).exists():
        atomic.write_bytes(folder / labels_name, true)
    name = f"{run_key}{_suffix(dtype)}"
    atomic.write_bytes(folder / name, pred)
    return {
        "path": f"{FOLDER}/{name}",
        "sha256": hashlib.sha256(pred).hexdigest(),
        "labels": f"{FOLDER}/{labels_name}",
        "labels_sha256": true_sha,
        "n": len(predicted),
        "dtype": dtype.str,
    }


def _read(run_dir: Path, relative: str, sha256: str, dtype: np.dtype) -> np.ndarray | str:
    path = run_dir / relative
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"{relative}: cannot be read ({err.strerror or err})"
    if hashlib.sha256(data).hexdigest() != sha256:
        return f"{relative}: SHA-256 differs from the record's (changed since the run wrote it)"
    return np.frombuffer(data, dtype=dtype)


def correct(run_dir: Path, field: Mapping[str, Any]) -> np.ndarray | str:
    """Whether the run classified each test example right (booleans, test order), from its
    record's ``predictions`` field; or, when the files are missing, changed or do not match,
    one line saying why."""
    try:
        dtype = np.dtype(field["dtype"])
        predicted = _read(run_dir, field["path"], field["sha256"], dtype)
        labels = _read(run_dir, field["labels"], field["labels_sha256"], dtype)
        n = int(field["n"])
    except (KeyError, TypeError, ValueError) as err:
        return f"malformed predictions field ({err})"
    for part in (predicted, labels):
        if isinstance(part, str):
            return part
    if not len(predicted) == len(labels) == n:
        return f"{field['path']}: {len(predicted)} predictions, {len(labels)} labels, n {n}"
    return predicted == labels
