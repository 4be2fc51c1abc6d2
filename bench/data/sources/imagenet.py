"""Downsampled ImageNet (32x32 and 64x64) from its publisher's pickled batch files."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import DataConfig
from bench.data import files
from bench.data.registry import Decoded, register_dataset
from bench.errors import DataError

_TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
_VAL = ("val_data",)
_URL = "https://image-net.org/download-images.php (Downsampled ImageNet, after registering)"
#: ImageNet's per-channel statistics, the constants the ImageNet literature uses.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _how(side: int) -> str:
    return (
        f"get Imagenet{side}_train.zip and Imagenet{side}_val.zip (the pickled batches, not the "
        f"npz) from {_URL} and unzip them into data.root; torchvision cannot download them"
    )


def _locate(cfg: DataConfig, side: int) -> tuple[list[Path], list[Path]]:
    """The ten training batches and the validation file, each in data.root or its zip's folder."""
    if cfg.download:
        raise DataError(f"ImageNet{side}: data.download is not available; {_how(side)}")
    train = files.find_files(cfg, _TRAIN, f"ImageNet{side}", _how(side), (f"Imagenet{side}_train",))
    val = files.find_files(cfg, _VAL, f"ImageNet{side}", _how(side), (f"Imagenet{side}_val",))
    return train, val


def _register(side: int):
    def check(cfg: DataConfig, params: Mapping[str, Any]) -> None:
        _locate(cfg, side)

    return register_dataset(
        f"imagenet{side}",
        label=f"ImageNet {side}x{side}",
        channels=3,
        image_size=side,
        num_classes=1000,
        num_train=1_281_167,
        mean=_MEAN,
        std=_STD,
        files=f"{_URL}: Imagenet{side}_train.zip, Imagenet{side}_val.zip (no published checksums)",
        check_files=check,
    )


@_register(32)
def imagenet32(cfg: DataConfig) -> Decoded:
    """Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017): 1,281,167 + 50,000 val, 1000 classes."""
    return _load(cfg, 32)


@_register(64)
def imagenet64(cfg: DataConfig) -> Decoded:
    """Downsampled ImageNet 64x64 (Chrabaszcz et al. 2017): 1,281,167 + 50,000 val, 1000 classes."""
    return _load(cfg, 64)


def _load(cfg: DataConfig, side: int) -> Decoded:
    """Decode the batches into one preallocated tensor (ImageNet64's training set is ~16 GB).

    The publisher lists no checksums for these files, so none is verified; the record's
    ``dataset_sha256`` still names the decoded data.
    """
    train_paths, val_paths = _locate(cfg, side)
    train = [_batch(p, side) for p in train_paths]
    n = sum(len(y) for _, y in train)
    train_x = torch.empty((n, 3, side, side), dtype=torch.uint8)
    at = 0
    for x, _ in train:
        train_x[at : at + len(x)] = x
        at += len(x)
    train_y = torch.cat([y for _, y in train])
    del train
    test_x, test_y = _batch(val_paths[0], side)
    classes = tuple(f"class_{i}" for i in range(1000))
    return Decoded(train_x, train_y, test_x, test_y, classes)


def _batch(path: Path, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickled batch: ``data`` rows of red, green then blue planes; ``labels`` 1..1000.

    Unpickling runs code a hostile file could carry: only the publisher's files or one's own
    copies belong in data.root.
    """
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise DataError(f"{path}: not a downsampled-ImageNet batch ({err})") from None
    data = np.asarray(batch.get("data"), dtype=np.uint8)
    labels = np.asarray(batch.get("labels"), dtype=np.int64) - 1
    if data.ndim != 2 or data.shape[1] != 3 * side * side or len(labels) != len(data):
        raise DataError(
            f"{path}: 'data' has shape {data.shape} with {len(labels)} labels; expected "
            f"(N, {3 * side * side}) and N labels"
        )
    if len(labels) and not (labels.min() >= 0 and labels.max() < 1000):
        raise DataError(f"{path}: labels outside 1..1000")
    return torch.from_numpy(data.reshape(-1, 3, side, side)), torch.from_numpy(labels)
