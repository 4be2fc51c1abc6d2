"""Datasets decoded to uint8 CPU tensors: the sources, subsets, public and validation splits."""

from __future__ import annotations

import hashlib
import urllib.error
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.config import DataConfig
from bench.data.imagefolder import class_names, folder_root, image_files, load_imagefolder
from bench.errors import DataError
from bench.seeds import stream

#: Training examples in CIFAR-10.
CIFAR10_NUM_TRAIN = 50_000
#: Classes in CIFAR-10.
CIFAR10_NUM_CLASSES = 10


@dataclass(frozen=True, eq=False)
class Dataset:
    """A decoded dataset: uint8 images ``(N, 3, H, W)`` and int64 labels, on the CPU.

    Attributes:
        name: Human name for reports, e.g. ``CIFAR-10``.
        train_x: Private training images (the public split already taken out).
        train_y: Labels of ``train_x``.
        test_x: Test images.
        test_y: Labels of ``test_x``.
        public_x: Training images held out as public data, or None without a public split.
        public_y: Labels of ``public_x``, or None.
        num_classes: Number of classes.
        mean: Per-channel mean of the [0, 1] inputs used to standardise them.
        std: Per-channel standard deviation of the [0, 1] inputs.
        classes: Class names, in label order.
        val_index: Indices into ``train_x`` of the validation split (tuning runs hold them out
            and are scored on them; final runs train on them), or None without one.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    public_x: torch.Tensor | None
    public_y: torch.Tensor | None
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...] = ()
    val_index: torch.Tensor | None = None


def dataset_checksum(dataset: Dataset) -> str:
    """SHA-256 of the decoded arrays a run reads (private, public and test images and labels,
    with their shapes), so that a record names its data without naming a path on the machine
    that made it: two copies of a dataset that decode to the same tensors share the checksum."""
    digest = hashlib.sha256()
    for name in ("train_x", "train_y", "public_x", "public_y", "test_x", "test_y"):
        tensor = getattr(dataset, name)
        digest.update(f"{name}:{None if tensor is None else tuple(tensor.shape)};".encode())
        if tensor is not None:
            digest.update(tensor.contiguous().numpy())
    return digest.hexdigest()


def load_dataset(cfg: DataConfig) -> Dataset:
    """Decode the source named by ``cfg``, take the subsets and the public split.

    Subsets and the public split are drawn from generators seeded by ``cfg.split_seed`` alone,
    so every run seed and every norm sees the same private, public and test sets.

    Raises:
        DataError: When the data is missing or malformed; the message names the path.
    """
    if cfg.source == "synthetic":
        train_x, train_y, test_x, test_y = _synthetic(cfg)
        classes = tuple(f"class_{i}" for i in range(cfg.num_classes))
    elif cfg.source == "cifar10":
        train_x, train_y, test_x, test_y, classes = _cifar10(cfg)
    elif cfg.source == "imagefolder":
        train_x, train_y, test_x, test_y, classes = load_imagefolder(cfg)
    else:
        raise DataError(f"unknown data source {cfg.source!r}")
    train_x, train_y = _subset(train_x, train_y, cfg.train_size, cfg.split_seed, "train")
    test_x, test_y = _subset(test_x, test_y, cfg.test_size, cfg.split_seed, "test")
    train_x, train_y, public_x, public_y = _split_public(cfg, train_x, train_y)
    # Drawn from the private set after the public split, so the two are disjoint.
    val_index = _val_index(cfg, len(train_y))
    tensors = (train_x, train_y, test_x, test_y, public_x, public_y)
    stats = (cfg.mean, cfg.std)
    return Dataset(cfg.dataset_name, *tensors, len(classes), *stats, tuple(classes), val_index)


def _split_public(
    cfg: DataConfig, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(private x, private y, public x, public y)``; the public pair is None without a split."""
    if not cfg.public_split:
        return x, y, None, None
    n = len(y)
    if cfg.public_split >= n:
        raise DataError(
            f"{cfg.root or cfg.source}: public_split {cfg.public_split} leaves no private "
            f"training data ({n} training examples)"
        )
    order = torch.randperm(n, generator=split_generator(cfg.split_seed, "public"))
    public = order[: cfg.public_split].sort().values
    private = order[cfg.public_split :].sort().values
    return x[private], y[private], x[public], y[public]


def _val_index(cfg: DataConfig, n_private: int) -> torch.Tensor | None:
    """Indices of the validation split among the private examples, or None without one."""
    if not cfg.val_split:
        return None
    if cfg.val_split >= n_private:
        raise DataError(
            f"{cfg.root or cfg.source}: val_split {cfg.val_split} leaves no private "
            f"training data ({n_private} private examples)"
        )
    order = torch.randperm(n_private, generator=split_generator(cfg.split_seed, "val"))
    return order[: cfg.val_split].sort().values


def count_train_examples(cfg: DataConfig) -> int:
    """Training examples (public split included) ``load_dataset`` will produce, without decoding.

    Cheap enough for config validation: an imagefolder source costs one directory walk.

    Raises:
        DataError: When an imagefolder root has no usable ``train/`` folder.
    """
    if cfg.source == "synthetic":
        available = cfg.train_size
    elif cfg.source == "cifar10":
        available = CIFAR10_NUM_TRAIN
    else:
        root = folder_root(cfg)
        classes = class_names(root / "train")
        available = sum(len(image_files(root / "train" / c)) for c in classes)
    cap = cfg.train_size
    return available if cap is None else min(available, cap)


def check_data(cfg: DataConfig) -> None:
    """Make sure ``cfg``'s data is there before a sweep starts (CIFAR-10 is downloaded now when
    ``data.download`` allows it; an imagefolder root is walked): a sweep then never stops at
    its first cell for want of data.

    Raises:
        DataError: One line naming the path and what to do.
    """
    if cfg.source == "cifar10":
        _cifar10(cfg)
    elif cfg.source == "imagefolder":
        count_train_examples(cfg)


def count_classes(cfg: DataConfig) -> int:
    """Classes ``load_dataset`` will produce, without decoding (one directory listing)."""
    if cfg.source == "synthetic":
        return cfg.num_classes
    if cfg.source == "cifar10":
        return CIFAR10_NUM_CLASSES
    return len(class_names(folder_root(cfg) / "train"))


def _synthetic(cfg: DataConfig) -> tuple[torch.Tensor, ...]:
    """Learnable generated images: a fixed low-frequency colour pattern per class, plus noise.

    The class patterns share a common background and differ by a moderate amplitude; each image
    varies the contrast and colour of its pattern and adds pixel noise, so a linear classifier
    on raw pixels is well above chance but not perfect, and crops and flips keep the class.
    """
    gen = split_generator(cfg.split_seed, "synthetic")
    k, size = cfg.num_classes, cfg.image_size
    n_train, n_test = cfg.train_size, cfg.test_size
    n = n_train + n_test
    # 4x4 colour grids upsampled: patterns survive a few pixels of shift, as real objects do.
    background = torch.rand(1, 3, 4, 4, generator=gen)
    offsets = torch.rand(k, 3, 4, 4, generator=gen) - 0.5
    coarse = background + 0.45 * offsets
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
    colour = 0.1 * torch.randn(n, 3, 1, 1, generator=gen)
    noise = 0.3 * torch.randn(n, 3, size, size, generator=gen)
    images = 0.5 + contrast * (patterns[labels] - 0.5) + colour + noise
    x = (images * 255).round().clamp(0, 255).to(torch.uint8)
    return x[:n_train], labels[:n_train], x[n_train:], labels[n_train:]


def _cifar10(cfg: DataConfig) -> tuple:
    from torchvision.datasets import CIFAR10  # heavy import, only needed for this source

    try:
        train = CIFAR10(cfg.root, train=True, download=cfg.download)
        test = CIFAR10(cfg.root, train=False, download=cfg.download)
    except (RuntimeError, OSError, urllib.error.URLError) as err:
        fetch = (
            "data.download is true, so the download failed: check the network"
            if cfg.download
            else "set data.download: true where the network allows"
        )
        raise DataError(
            f"{cfg.root}: CIFAR-10 is not there or cannot be read ({err}); {fetch}, or decode "
            "a copy into train/ and test/ class folders and use data.source: imagefolder"
        ) from None
    # `.data` is already one (N, 32, 32, 3) uint8 array: no per-image conversion needed.
    return (
        _hwc_to_chw(train.data),
        torch.tensor(train.targets, dtype=torch.int64),
        _hwc_to_chw(test.data),
        torch.tensor(test.targets, dtype=torch.int64),
        tuple(train.classes),
    )


def _hwc_to_chw(array) -> torch.Tensor:
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def split_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose, so the public split does not move when a cap changes."""
    return stream(seed, purpose)


def _subset(
    x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int, purpose: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=split_generator(seed, purpose))[:n].sort().values
    return x[keep], y[keep]
