"""MNIST and Fashion-MNIST from their publishers' gzipped IDX files: 28x28 grey, padded or not."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import DataConfig
from bench.data import files
from bench.data.registry import Decoded, register_dataset
from bench.errors import DataError

_NAMES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
#: IDX magic numbers (unsigned bytes, then the dimension count) of image and label files.
_IMAGES, _LABELS = 0x00000803, 0x00000801


def _side(cfg: DataConfig, params: Mapping[str, Any]) -> int:
    return 28 + 2 * params["pad"]


def _how(url: str) -> str:
    return (
        f"get the four *-ubyte.gz files from {url} into data.root, or set data.download: true "
        "where the network allows"
    )


def _check(label: str, folder: str, url: str):
    def check(cfg: DataConfig, params: Mapping[str, Any]) -> None:
        if params["pad"] < 0:
            raise DataError(f"{label}: pad={params['pad']} must be >= 0")
        files.find_files(cfg, _NAMES, label, _how(url), (f"{folder}/raw",))

    return check


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of yann.lecun.com's)"
_FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist"


@register_dataset(
    "mnist",
    label="MNIST",
    channels=1,
    image_size=_side,
    num_classes=10,
    num_train=60_000,
    flip=False,  # digits: a mirrored 2 or 5 is not a digit of its class
    mean=(0.1307,),  # the constants the MNIST literature uses
    std=(0.3081,),
    files=_MNIST_URL,
    check_files=_check("MNIST", "MNIST", _MNIST_URL),
)
def mnist(cfg: DataConfig, *, pad: int = 0) -> Decoded:
    """MNIST (LeCun et al. 1998): 60,000 + 10,000 28x28 grey digits; pad=2 zero-pads to 32x32."""
    from torchvision.datasets import MNIST  # heavy import: its MD5 table and download only

    return _load(cfg, pad, "MNIST", MNIST, tuple(str(d) for d in range(10)), _MNIST_URL)


@register_dataset(
    "fashion_mnist",
    label="Fashion-MNIST",
    channels=1,
    image_size=_side,
    num_classes=10,
    num_train=60_000,
    flip=True,  # a mirrored shirt is still a shirt
    mean=(0.2860,),  # the constants the Fashion-MNIST literature uses
    std=(0.3530,),
    files=_FASHION_URL,
    check_files=_check("Fashion-MNIST", "FashionMNIST", _FASHION_URL),
)
def fashion_mnist(cfg: DataConfig, *, pad: int = 0) -> Decoded:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 28x28 grey clothes; pad=2 gives 32x32."""
    from torchvision.datasets import FashionMNIST  # heavy import: MD5 table and download only

    return _load(cfg, pad, "Fashion-MNIST", FashionMNIST, _FASHION_CLASSES, _FASHION_URL)


def _load(cfg: DataConfig, pad: int, label: str, tv_class, classes, url: str) -> Decoded:
    """Find, verify and decode the four files; zero-pad the images by ``pad`` on each side."""
    if pad < 0:
        raise DataError(f"{label}: pad={pad} must be >= 0")
    subdirs = (f"{tv_class.__name__}/raw",)
    paths = files.find_or_download(
        cfg, _NAMES, label, _how(url), subdirs, lambda: tv_class(cfg.root, download=True)
    )
    md5 = dict(tv_class.resources)
    for path in paths:
        files.verify(cfg, path, md5[path.name])
    train_x, train_y, test_x, test_y = (read_idx(p) for p in paths)
    for x, y, path in ((train_x, train_y, paths[1]), (test_x, test_y, paths[3])):
        if len(x) != len(y):
            raise DataError(f"{path}: {len(y)} labels for {len(x)} images")
    train_x, test_x = (F.pad(x.unsqueeze(1), (pad,) * 4) for x in (train_x, test_x))
    return Decoded(train_x, train_y.long(), test_x, test_y.long(), classes)


def read_idx(path: Path) -> torch.Tensor:
    """A gzipped IDX file of unsigned bytes (``(N, 28, 28)`` images or ``(N,)`` labels).

    Why not torchvision's reader: it reads only the uncompressed files its download extracts;
    the publisher distributes the gzipped ones, and the format is a 4-byte magic number, one
    big-endian size per dimension, then the bytes.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: not a gzipped IDX file ({err})") from None
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic not in (_IMAGES, _LABELS):
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {magic})")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: {body.size} bytes for dimensions {dims}")
    return torch.from_numpy(body.reshape(dims).copy())
