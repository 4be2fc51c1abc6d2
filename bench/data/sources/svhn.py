"""SVHN (cropped digits) from its publisher's MATLAB files (``{train,test,extra}_32x32.mat``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch

from bench.config import DataConfig
from bench.data import files
from bench.data.registry import Decoded, register_dataset
from bench.errors import DataError

_HOW = (
    "get train_32x32.mat and test_32x32.mat (and extra_32x32.mat for extra=true) from "
    "http://ufldl.stanford.edu/housenumbers/ into data.root, or set data.download: true where "
    "the network allows"
)
_TRAIN, _TEST, _EXTRA = "train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"


def _names(params: Mapping[str, Any]) -> tuple[str, ...]:
    return (_TRAIN, _TEST, _EXTRA) if params["extra"] else (_TRAIN, _TEST)


def _check(cfg: DataConfig, params: Mapping[str, Any]) -> None:
    files.find_files(cfg, _names(params), "SVHN", _HOW)


@register_dataset(
    "svhn",
    label=lambda cfg, params: "SVHN (train+extra)" if params["extra"] else "SVHN",
    channels=3,
    image_size=32,
    num_classes=10,
    num_train=lambda cfg, params: 73_257 + (531_131 if params["extra"] else 0),
    flip=False,  # digits: a mirrored 2 or 5 is not a digit of its class
    # The constants the SVHN literature uses (computed on the public training release).
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    files="http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat, "
    "extra_32x32.mat)",
    check_files=_check,
)
def svhn(cfg: DataConfig, *, extra: bool = False) -> Decoded:
    """SVHN (Netzer et al. 2011): 73,257 (+531,131 extra) + 26,032 32x32 house-number digits."""
    from torchvision.datasets import SVHN  # heavy import: its MD5 table and download only

    names = _names({"extra": extra})

    def fetch() -> None:
        for split in ("train", "test", "extra")[: len(names)]:
            SVHN(cfg.root, split=split, download=True)

    paths = files.find_or_download(cfg, names, "SVHN", _HOW, (), fetch)
    md5 = {name: digest for _, name, digest in SVHN.split_list.values()}
    for path in paths:
        files.verify(cfg, path, md5[path.name])
    train_x, train_y = _read(paths[0])
    test_x, test_y = _read(paths[1])
    if extra:
        extra_x, extra_y = _read(paths[2])
        train_x, train_y = torch.cat([train_x, extra_x]), torch.cat([train_y, extra_y])
    return Decoded(train_x, train_y, test_x, test_y, tuple(str(d) for d in range(10)))


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` (32, 32, 3, N) uint8 as ``(N, 3, 32, 32)``; ``y`` (N, 1) with 10 for the digit 0."""
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except (ValueError, OSError, NotImplementedError) as err:
        raise DataError(f"{path}: not an SVHN .mat file ({err})") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        shape = None if x is None else x.shape
        raise DataError(f"{path}: expected X (32, 32, 3, N) and y (N, 1); X is {shape}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1), dtype=np.uint8))
    labels = torch.from_numpy(y.reshape(-1).astype(np.int64) % 10)
    return images, labels
