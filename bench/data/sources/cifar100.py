"""CIFAR-100 from its publisher's pickled batches (``cifar-100-python/{train,test,meta}``)."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bench.config import DataConfig
from bench.data import files
from bench.data.registry import Decoded, register_dataset
from bench.errors import DataError

_FOLDER = "cifar-100-python"
_HOW = (
    "get cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
    "it into data.root, or set data.download: true where the network allows"
)
_NAMES = ("train", "test", "meta")


def _classes(cfg: DataConfig, params: Mapping[str, Any]) -> int:
    return 100 if params["labels"] == "fine" else 20


def _label(cfg: DataConfig, params: Mapping[str, Any]) -> str:
    return "CIFAR-100" if params["labels"] == "fine" else "CIFAR-100 (20 superclasses)"


def _check(cfg: DataConfig, params: Mapping[str, Any]) -> None:
    files.find_files(cfg, _NAMES, "CIFAR-100", _HOW, (_FOLDER,))


@register_dataset(
    "cifar100",
    label=_label,
    choices={"labels": ("fine", "coarse")},
    channels=3,
    image_size=32,
    num_classes=_classes,
    num_train=50_000,
    # The constants the CIFAR-100 literature uses (computed on the public training release).
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    files="https://www.cs.toronto.edu/~kriz/cifar.html (cifar-100-python.tar.gz)",
    check_files=_check,
)
def cifar100(cfg: DataConfig, *, labels: str = "fine") -> Decoded:
    """CIFAR-100 (Krizhevsky 2009): 50,000 + 10,000 32x32 colour images, 100 classes (20 coarse)."""
    from torchvision.datasets import CIFAR100  # heavy import: its MD5 table and download only

    paths = files.find_or_download(
        cfg, _NAMES, "CIFAR-100", _HOW, (_FOLDER,), lambda: CIFAR100(cfg.root, download=True)
    )
    md5 = dict(CIFAR100.train_list + CIFAR100.test_list)
    md5["meta"] = CIFAR100.meta["md5"]
    for path in paths:
        files.verify(cfg, path, md5[path.name])
    train, test, meta = (_unpickle(p) for p in paths)
    key = f"{labels}_labels"
    return Decoded(
        _images(train, paths[0]),
        torch.tensor(train[key], dtype=torch.int64),
        _images(test, paths[1]),
        torch.tensor(test[key], dtype=torch.int64),
        tuple(meta[f"{labels}_label_names"]),
    )


def _unpickle(path) -> dict:
    """One of the publisher's pickles. Unpickling runs code a hostile file could carry: only the
    publisher's files (checksummed) or one's own copies belong in data.root."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a CIFAR-100 pickle ({err})") from None


def _images(batch: dict, path) -> torch.Tensor:
    """The ``data`` rows (N, 3072: the red, green then blue 32x32 planes) as ``(N, 3, 32, 32)``."""
    data = np.asarray(batch.get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected (N, 3072)")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
