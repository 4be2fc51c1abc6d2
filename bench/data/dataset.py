"""Datasets decoded to uint8 CPU tensors: the sources, subsets, public and validation splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from bench.config import DataConfig
from bench.data import sources  # noqa: F401  (registers the built-in datasets)
from bench.data.registry import Decoded, ResolvedDataset, resolve_source
from bench.errors import DataError
from bench.seeds import stream


@dataclass(frozen=True, eq=False)
class Dataset:
    """A decoded dataset: uint8 images ``(N, C, H, W)`` and int64 labels, on the CPU.

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
        flip: Whether a horizontal flip keeps the class, as the dataset declares it (False for
            digits); augmentation flips only where it does.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    public_x: torch.Tensor | None
    public_y: torch.Tensor | None
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    val_index: torch.Tensor | None = None
    flip: bool = True

    @property
    def channels(self) -> int:
        """C: image channels (1 for grey images, which are never silently tripled)."""
        return int(self.train_x.shape[1])


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
    source = resolve_source(cfg.source)
    train_x, train_y, test_x, test_y, classes = _decode(cfg)
    train_x, train_y = _subset(train_x, train_y, cfg.train_size, cfg.split_seed, "train")
    test_x, test_y = _subset(test_x, test_y, cfg.test_size, cfg.split_seed, "test")
    train_x, train_y, public_x, public_y = _split_public(cfg, train_x, train_y)
    # Drawn from the private set after the public split, so the two are disjoint.
    val_index = _val_index(cfg, len(train_y))
    tensors = (train_x, train_y, test_x, test_y, public_x, public_y)
    stats = _statistics(cfg, source, train_x.shape[1])
    flip = bool(source.declared("flip", cfg))
    name = cfg.dataset or source.declared("label", cfg) or cfg.dataset_name
    return Dataset(name, *tensors, len(classes), *stats, tuple(classes), val_index, flip)


def _decode(cfg: DataConfig) -> Decoded:
    """The source's files decoded and their shapes checked (the loader may be a plugin's)."""
    decoded = resolve_source(cfg.source).load(cfg)
    for split in ("train", "test"):
        x, y = getattr(decoded, f"{split}_x"), getattr(decoded, f"{split}_y")
        if x.dtype != torch.uint8 or x.ndim != 4 or len(x) != len(y):
            raise DataError(
                f"{cfg.source}: the loader returned {split} images {tuple(x.shape)} "
                f"{x.dtype} with {len(y)} labels; expected uint8 (N, C, H, W) and N labels"
            )
    return decoded


def _statistics(
    cfg: DataConfig, source: ResolvedDataset, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)``: the config's, else the dataset's declared constants; one per channel."""
    mean = cfg.mean if cfg.mean is not None else source.declared("mean", cfg)
    std = cfg.std if cfg.std is not None else source.declared("std", cfg)
    for name, value in (("mean", mean), ("std", std)):
        if len(value) != channels:
            raise DataError(
                f"{cfg.source}: data.{name} has {len(value)} values for {channels}-channel "
                f"images (given: {list(value)})"
            )
    return tuple(mean), tuple(std)


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
    """Training examples (public split included) ``load_dataset`` will produce.

    Cheap enough for config validation: the publisher's checksummed files have the sizes their
    dataset declares (only their presence is checked), an imagefolder source costs one
    directory walk, and anything else (a private copy with ``verify_checksum: false``, whose
    sizes may differ from the publisher's) is decoded to be counted.

    Raises:
        DataError: When the files are missing (one line: where, how to get them).
    """
    available, _ = _sizes(cfg)
    cap = cfg.train_size
    return available if cap is None else min(available, cap)


def check_data(cfg: DataConfig) -> None:
    """Make sure ``cfg``'s data is there before a sweep starts: a sweep then never stops at
    its first cell for want of data. A source that can check its files without reading them
    does so (unless ``data.download`` will fetch them); a source that counts (a folder of
    images) is counted; any other source of files is read once, through torchvision's
    download where ``data.download`` allows it (CIFAR-10: seconds).

    Raises:
        DataError: One line naming where the files were looked for and how to get them.
    """
    source = resolve_source(cfg.source)
    if source.spec.check_files is not None and not cfg.download:
        source.spec.check_files(cfg, source.params)
    elif source.spec.count is not None:
        source.spec.count(cfg, source.params)
    elif source.spec.needs_root:
        _decode(cfg)


def count_classes(cfg: DataConfig) -> int:
    """Classes ``load_dataset`` will produce, counted as `count_train_examples` counts."""
    return _sizes(cfg)[1]


def image_shape(cfg: DataConfig) -> tuple[int, int | None]:
    """``(channels, side)`` the dataset declares (the side is None where only decoding tells)."""
    source = resolve_source(cfg.source)
    return int(source.declared("channels", cfg)), source.declared("image_size", cfg)


def _sizes(cfg: DataConfig) -> tuple[int, int]:
    source = resolve_source(cfg.source)
    if source.spec.count is not None:
        return source.spec.count(cfg, source.params)
    if source.spec.check_files is not None and not cfg.download:
        source.spec.check_files(cfg, source.params)
    n, k = source.declared("num_train", cfg), source.declared("num_classes", cfg)
    if n is not None and k is not None and (cfg.verify_checksum or cfg.download):
        return n, k
    decoded = _decode(cfg)
    return len(decoded.train_y), len(decoded.classes)


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
