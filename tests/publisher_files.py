"""Tiny files in each publisher's format (CIFAR-100 pickles, SVHN .mat, IDX, ImageNet batches)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import scipy.io

IDX_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _images(n: int, shape: tuple[int, ...], labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 images whose mean brightness follows the label, so a few steps can learn them."""
    rng = np.random.default_rng(seed)
    base = (labels.reshape(-1, *[1] * len(shape)) * 23 % 200).astype(np.float64)
    noise = rng.integers(0, 56, size=(n, *shape))
    return (base + noise).astype(np.uint8)


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, classes, size=n)


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as the publisher pickles them."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        fine = _labels(n, 100, seed)
        data = _images(n, (3 * 32 * 32,), fine, seed)
        batch = {"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {
        "fine_label_names": [f"fine_{i}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return root


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20, n_extra: int = 0) -> Path:
    """``{train,test,extra}_32x32.mat``: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 (10: digit 0)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1), ("extra", n_extra, 2)):
        if n == 0:
            continue
        digits = _labels(n, 10, seed)
        x = _images(n, (32, 32, 3), digits, seed).transpose(1, 2, 3, 0)
        y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x, "y": y})
    return root


def write_idx(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """The four gzipped IDX files of MNIST and Fashion-MNIST (28x28 unsigned bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    names = iter(IDX_NAMES)
    for n, seed in ((n_train, 0), (n_test, 1)):
        labels = _labels(n, 10, seed)
        images = _images(n, (28, 28), labels, seed)
        with gzip.open(root / next(names), "wb") as f:
            f.write(struct.pack(">IIII", 0x00000803, n, 28, 28) + images.tobytes())
        with gzip.open(root / next(names), "wb") as f:
            f.write(struct.pack(">II", 0x00000801, n) + labels.astype(np.uint8).tobytes())
    return root


def write_imagenet(root: Path, side: int = 32, per_batch: int = 4, n_val: int = 20) -> Path:
    """``Imagenet{side}_train/train_data_batch_{1..10}`` and ``Imagenet{side}_val/val_data``:
    pickled dicts of ``data`` (N, 3 * side * side) uint8 and ``labels`` in 1..1000."""
    batches = [(f"Imagenet{side}_train/train_data_batch_{i}", per_batch, i) for i in range(1, 11)]
    for name, n, seed in (*batches, (f"Imagenet{side}_val/val_data", n_val, 11)):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = _labels(n, 10, seed)  # ten of the thousand classes: learnable in a few steps
        data = _images(n, (3 * side * side,), labels, seed)
        path.write_bytes(pickle.dumps({"data": data, "labels": (labels + 1).tolist()}))
    return root
