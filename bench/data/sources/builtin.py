"""The first three sources: generated images, CIFAR-10 through torchvision, a folder of images."""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from bench.config import DataConfig
from bench.data.imagefolder import class_names, folder_root, image_files, load_imagefolder
from bench.data.registry import Decoded, register_dataset
from bench.errors import DataError
from bench.seeds import stream

#: CIFAR-10's per-channel mean and standard deviation of the [0, 1] inputs (the constants the
#: DP-SGD literature uses). Also the statistics of the synthetic and imagefolder sources, which
#: used them before each dataset declared its own, so that their run keys stay where they were.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _synthetic_size(cfg: DataConfig, params: Mapping[str, Any]) -> tuple[int, int]:
    return cfg.train_size, cfg.num_classes


@register_dataset(
    "synthetic",
    label="synthetic",
    channels=3,
    image_size=lambda cfg, params: cfg.image_size,
    num_classes=lambda cfg, params: cfg.num_classes,
    count=_synthetic_size,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    files="generated from data.split_seed; no files",
    needs_root=False,
)
def synthetic(cfg: DataConfig) -> Decoded:
    """Learnable generated images: a fixed low-frequency colour pattern per class, plus noise.

    The class patterns share a common background and differ by a moderate amplitude; each image
    varies the contrast and colour of its pattern and adds pixel noise, so a linear classifier
    on raw pixels is well above chance but not perfect, and crops and flips keep the class.
    """
    gen = stream(cfg.split_seed, "synthetic")
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
    classes = tuple(f"class_{i}" for i in range(k))
    return Decoded(x[:n_train], labels[:n_train], x[n_train:], labels[n_train:], classes)


@register_dataset(
    "cifar10",
    label="CIFAR-10",
    channels=3,
    image_size=32,
    num_classes=10,
    num_train=50_000,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    files="https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz), read by "
    "torchvision, which checks its MD5",
)
def cifar10(cfg: DataConfig) -> Decoded:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 32x32 colour images, 10 classes."""
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
    return Decoded(
        hwc_to_chw(train.data),
        torch.tensor(train.targets, dtype=torch.int64),
        hwc_to_chw(test.data),
        torch.tensor(test.targets, dtype=torch.int64),
        tuple(train.classes),
    )


def hwc_to_chw(array) -> torch.Tensor:
    """A ``(N, H, W, C)`` uint8 array as a contiguous ``(N, C, H, W)`` tensor."""
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _folder_size(cfg: DataConfig, params: Mapping[str, Any]) -> tuple[int, int]:
    """One directory walk: the training images and the class folders."""
    root = folder_root(cfg)
    classes = class_names(root / "train")
    return sum(len(image_files(root / "train" / c)) for c in classes), len(classes)


def _folder_label(cfg: DataConfig, params: Mapping[str, Any]) -> str | None:
    return os.path.basename(os.path.normpath(cfg.root)) if cfg.root else None


@register_dataset(
    "imagefolder",
    label=_folder_label,
    channels=3,
    count=_folder_size,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    files="your own root/train/<class>/* and root/test/<class>/* image files",
)
def imagefolder(cfg: DataConfig) -> Decoded:
    """A folder of images: root/{train,test}/<class>/*, decoded once as RGB, then cached."""
    return Decoded(*load_imagefolder(cfg))
