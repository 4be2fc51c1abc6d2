"""Datasets decoded once to uint8 tensors, kept on the device, Poisson-sampled and augmented there.

Why not ``torch.utils.data.DataLoader`` with per-image transforms: on CIFAR-sized images the
per-image Python transforms are CPU bound and starve a GPU, above all with augmentation
multiplicity (K views per example). And Opacus' ``DPDataLoader`` draws with q = 1/len(loader),
while the accountant must be handed the q = B/N the suite asks for. So the whole training set is
one uint8 tensor on the device, batches are drawn there with q = B/N (`DeviceData.poisson_batch`),
and crops and flips are batched tensor ops (`DeviceData.augment`).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import atomic
from bench.config import DataConfig, sha256_text
from bench.errors import DataError
from bench.seeds import stream

#: File suffixes an imagefolder source reads (what ``torchvision.io.decode_image`` decodes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
#: Training examples in CIFAR-10.
CIFAR10_NUM_TRAIN = 50_000
#: Classes in CIFAR-10.
CIFAR10_NUM_CLASSES = 10

_JPEG_SUFFIXES = (".jpg", ".jpeg")
# Bump when the cache layout changes, so old files are ignored rather than misread.
_CACHE_FORMAT = 1
_DECODE_CHUNK = 512
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


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
        train_x, train_y, test_x, test_y, classes = _imagefolder(cfg)
    else:
        raise DataError(f"unknown data source {cfg.source!r}")
    train_x, train_y = _subset(train_x, train_y, cfg.train_size, cfg.split_seed, "train")
    test_x, test_y = _subset(test_x, test_y, cfg.test_size, cfg.split_seed, "test")
    public_x = public_y = None
    if cfg.public_split:
        n = len(train_y)
        if cfg.public_split >= n:
            raise DataError(
                f"{cfg.root or cfg.source}: public_split {cfg.public_split} leaves no private "
                f"training data ({n} training examples)"
            )
        order = torch.randperm(n, generator=_generator(cfg.split_seed, "public"))
        public = order[: cfg.public_split].sort().values
        private = order[cfg.public_split :].sort().values
        public_x, public_y = train_x[public], train_y[public]
        train_x, train_y = train_x[private], train_y[private]
    val_index = None
    if cfg.val_split:
        if cfg.val_split >= len(train_y):
            raise DataError(
                f"{cfg.root or cfg.source}: val_split {cfg.val_split} leaves no private "
                f"training data ({len(train_y)} private examples)"
            )
        # Drawn from the private set after the public split, so the two are disjoint.
        order = torch.randperm(len(train_y), generator=_generator(cfg.split_seed, "val"))
        val_index = order[: cfg.val_split].sort().values
    return Dataset(
        name=cfg.dataset_name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        public_x=public_x,
        public_y=public_y,
        num_classes=len(classes),
        mean=cfg.mean,
        std=cfg.std,
        classes=tuple(classes),
        val_index=val_index,
    )


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
        root = _folder_root(cfg)
        classes = _class_names(root / "train")
        available = sum(len(_image_files(root / "train" / c)) for c in classes)
    cap = cfg.train_size
    return available if cap is None else min(available, cap)


def count_classes(cfg: DataConfig) -> int:
    """Classes ``load_dataset`` will produce, without decoding (one directory listing)."""
    if cfg.source == "synthetic":
        return cfg.num_classes
    if cfg.source == "cifar10":
        return CIFAR10_NUM_CLASSES
    return len(_class_names(_folder_root(cfg) / "train"))


# --- sources ----------------------------------------------------------------------------------


def _synthetic(cfg: DataConfig) -> tuple[torch.Tensor, ...]:
    """Learnable generated images: a fixed low-frequency colour pattern per class, plus noise.

    The class patterns share a common background and differ by a moderate amplitude; each image
    varies the contrast and colour of its pattern and adds pixel noise, so a linear classifier
    on raw pixels is well above chance but not perfect, and crops and flips keep the class.
    """
    gen = _generator(cfg.split_seed, "synthetic")
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
        raise DataError(
            f"{cfg.root}: CIFAR-10 is not there or cannot be read ({err}); set data.download: "
            "true where the network allows, or decode a copy into train/ and test/ class folders "
            "and use data.source: imagefolder"
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


def _imagefolder(cfg: DataConfig) -> tuple:
    """Decode ``root/{train,test}/<class>/*`` once, then read the cached tensors."""
    root = _folder_root(cfg)
    classes = _class_names(root / "train")
    test_classes = _class_names(root / "test")
    if test_classes != classes:
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        raise DataError(
            f"{root / 'test'}: class folders differ from train/ "
            f"(missing in test/: {missing or 'none'}; not in train/: {extra or 'none'})"
        )
    splits = {}
    for split in ("train", "test"):
        files, labels = [], []
        for label, name in enumerate(classes):
            found = _image_files(root / split / name)
            if not found:
                raise DataError(
                    f"{root / split / name}: no image files ({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
            labels += [label] * len(found)
        splits[split] = (files, labels)
    cache = _cache_path(cfg, root, [f for files, _ in splits.values() for f in files])
    if cache is not None and cache.is_file():
        cached = _read_cache(cache, classes)
        if cached is not None:
            return (*cached, tuple(classes))
    tensors = {}
    for split, (files, labels) in splits.items():
        tensors[f"{split}_x"] = _stack_same_size(_decode_files(files), files)
        tensors[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
    if cache is not None:
        _write_cache(cache, {"format": _CACHE_FORMAT, "classes": list(classes), **tensors})
    return (
        tensors["train_x"],
        tensors["train_y"],
        tensors["test_x"],
        tensors["test_y"],
        tuple(classes),
    )


def _folder_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise DataError("an imagefolder source needs data.root")
    root = Path(cfg.root).expanduser()
    if not (root / "train").is_dir():
        raise DataError(
            f"{root}: no train/ folder; an imagefolder root holds train/<class>/* and "
            "test/<class>/*"
        )
    return root


def _class_names(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing; an imagefolder root needs train/ and test/")
    # Hidden folders (.ipynb_checkpoints, ...) are tool debris, not classes.
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")
    if not names:
        raise DataError(f"{split_dir}: no class folders")
    return names


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        Path(e.path)
        for e in os.scandir(class_dir)
        if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)
    )


def _decode_files(files: Sequence[Path]) -> list[torch.Tensor]:
    """Read and decode image files to ``(3, H, W)`` uint8, in chunks on a thread pool.

    ``decode_jpeg`` on a list decodes a chunk in one call (the bulk of CIFAR-10 copies are
    JPEG); the threads overlap file reads with decoding, which releases the GIL.
    """
    chunks = [files[i : i + _DECODE_CHUNK] for i in range(0, len(files), _DECODE_CHUNK)]
    workers = max(1, min(8, os.cpu_count() or 1))
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec, yet they are still the
        # fastest decoder at hand (a list of JPEGs decodes ~10x faster than with PIL). Filtered
        # here in the calling thread because `catch_warnings` is not thread-safe.
        warnings.filterwarnings("ignore", message=_TV_DEPRECATION, category=DeprecationWarning)
        with ThreadPoolExecutor(workers) as pool:
            decoded = pool.map(_decode_chunk, chunks)
            return [image for chunk in decoded for image in chunk]


def _decode_chunk(files: Sequence[Path]) -> list[torch.Tensor]:
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
    except ImportError:  # a torchvision without its deprecated codecs
        return [_decode_with_pil(f) for f in files]

    raw = [read_file(str(f)) for f in files]
    if all(f.suffix.lower() in _JPEG_SUFFIXES for f in files):
        try:
            return decode_jpeg(raw, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # one bad file fails the batch; decode one by one below to name it
    images = []
    for f, data in zip(files, raw, strict=True):
        try:
            images.append(decode_image(data, mode=ImageReadMode.RGB))
        except RuntimeError as err:
            raise DataError(f"{f}: cannot decode the image ({err})") from None
    return images


def _decode_with_pil(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except OSError as err:
        raise DataError(f"{path}: cannot decode the image ({err})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _stack_same_size(images: Sequence[torch.Tensor], files: Sequence[Path]) -> torch.Tensor:
    shape = images[0].shape
    for image, f in zip(images, files, strict=True):
        if image.shape != shape:
            raise DataError(
                f"{f}: image is {tuple(image.shape[1:])} (H, W) but {files[0]} is "
                f"{tuple(shape[1:])}; all images must share one size"
            )
    return torch.stack(list(images))


def _cache_path(cfg: DataConfig, root: Path, files: Sequence[Path]) -> Path | None:
    """The cache file for this folder's current contents, or None when caching is off.

    Keyed by the absolute root, the file count and the newest modification time, so adding,
    removing or rewriting an image invalidates it without hashing every byte.
    """
    if cfg.cache_dir is None:
        return None
    newest = max(os.stat(f).st_mtime_ns for f in files)
    key = f"{_CACHE_FORMAT}|{root.resolve()}|{len(files)}|{newest}"
    digest = sha256_text(key)[:16]
    return Path(cfg.cache_dir).expanduser() / f"imagefolder-{root.resolve().name}-{digest}.pt"


def _read_cache(path: Path, classes: Sequence[str]) -> tuple[torch.Tensor, ...] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable cache is rebuilt, never trusted
        warnings.warn(f"{path}: ignoring an unreadable cache ({err})", stacklevel=3)
        return None
    if blob.get("format") != _CACHE_FORMAT or blob.get("classes") != list(classes):
        return None
    return blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"]


def _write_cache(path: Path, blob: dict) -> None:
    """Write atomically (`bench.atomic`) so a killed run never leaves half a cache."""
    try:
        atomic.write_with(path, lambda f: torch.save(blob, f))
    except OSError as err:  # a read-only cache only costs a re-decode next time
        warnings.warn(f"{path}: cannot write the decode cache ({err})", stacklevel=3)


# --- subsets ----------------------------------------------------------------------------------


def _generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose, so the public split does not move when a cap changes."""
    return stream(seed, purpose)


def _subset(
    x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int, purpose: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if n is None or n >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=_generator(seed, purpose))[:n].sort().values
    return x[keep], y[keep]


# --- on the device ----------------------------------------------------------------------------


class DeviceData:
    """A dataset's uint8 tensors on the device, with Poisson sampling and augmentation there.

    Every random operation takes an explicit ``torch.Generator`` on the same device, so one
    seed fixes the data order and the augmentations, identically for every norm.

    Attributes:
        device: Where the tensors live.
        train_x: Private training images, uint8 ``(N, 3, H, W)`` (without the validation split
            in a tuning run).
        train_y: Their labels, int64 ``(N,)``.
        test_x: The evaluation images, uint8: the test set, or the validation split in a
            tuning run (``eval_split`` says which).
        test_y: Their labels.
        eval_split: ``test`` or ``val``.
        public_x: Public images (held out of the private set), or None.
        public_y: Public labels, or None.
        num_classes: Number of classes.
    """

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device | str,
        *,
        normalize: bool = True,
        holdout: bool = False,
    ):
        """Copy ``dataset`` to ``device``; ``normalize`` standardises with its mean and std.

        With ``holdout`` (a tuning run) the validation split is taken out of the training
        examples and becomes the evaluation set (``eval_x``, ``eval_split == "val"``); the test
        set is not copied at all, so nothing in the run can read it.
        """
        self.device = torch.device(device)
        train_x, train_y = dataset.train_x, dataset.train_y
        eval_x, eval_y, self.eval_split = dataset.test_x, dataset.test_y, "test"
        if holdout:
            if dataset.val_index is None:
                raise DataError("a tuning run needs a validation split (data.val_split > 0)")
            keep = torch.ones(len(train_y), dtype=torch.bool)
            keep[dataset.val_index] = False
            eval_x, eval_y = train_x[dataset.val_index], train_y[dataset.val_index]
            train_x, train_y, self.eval_split = train_x[keep], train_y[keep], "val"
        self.train_x = train_x.to(self.device)
        self.train_y = train_y.to(self.device)
        self.test_x = eval_x.to(self.device)
        self.test_y = eval_y.to(self.device)
        self.public_x = None if dataset.public_x is None else dataset.public_x.to(self.device)
        self.public_y = None if dataset.public_y is None else dataset.public_y.to(self.device)
        self.num_classes = dataset.num_classes
        # (x / 255 - mean) / std folded into one multiply-add per pixel.
        mean = torch.tensor(dataset.mean if normalize else (0.0, 0.0, 0.0), device=self.device)
        std = torch.tensor(dataset.std if normalize else (1.0, 1.0, 1.0), device=self.device)
        self._scale = (1.0 / (255.0 * std)).view(3, 1, 1)
        self._shift = (-mean / std).view(3, 1, 1)

    @property
    def num_private(self) -> int:
        """N: the number of private training examples."""
        return self.train_x.shape[0]

    def generator(self, seed: int, purpose: str) -> torch.Generator:
        """The run stream of ``purpose`` under run seed ``seed``, on this data's device."""
        return stream(seed, purpose, self.device)

    def sample_rate(self, batch_size: int) -> float:
        """q = B / N: the Poisson sampling rate for an expected batch of ``batch_size``.

        The same q must be handed to the accountant.
        """
        if not 1 <= batch_size <= self.num_private:
            raise ValueError(f"batch_size must be in [1, {self.num_private}], got {batch_size}")
        return batch_size / self.num_private

    def poisson_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of one Poisson-sampled batch: each example included independently with q.

        The size is Binomial(N, q) and may be 0; an empty batch is a valid DP-SGD step (noise
        only), so callers must handle it rather than redraw, which would change the privacy
        analysis.

        Returns:
            A 1-D int64 tensor of indices into ``train_x`` on the device, in increasing order.
        """
        q = self.sample_rate(batch_size)
        mask = torch.rand(self.num_private, generator=generator, device=self.device) < q
        return torch.nonzero(mask, as_tuple=True)[0]

    def augment(
        self,
        x: torch.Tensor,
        *,
        views: int,
        padding: int,
        flip: bool,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Reflect-pad, random-crop and random-flip ``views`` independent views of each image.

        One gather builds every view: per-view crop offsets and flips become row and column
        index maps into the reflect-padded image, so there is no loop over examples and the
        padded image is never materialised.

        Args:
            x: uint8 images ``(B, 3, H, W)`` on the device (B may be 0).
            views: Views per image (augmentation multiplicity K).
            padding: Reflect padding in pixels before the crop back to ``(H, W)``; < H and W.
            flip: Flip each view horizontally with probability 1/2.
            generator: Generator on the device; fixes offsets and flips.

        Returns:
            float32 ``(B, views, 3, H, W)``, scaled to [0, 1] and standardised if configured.
        """
        b, c, h, w = x.shape
        if padding >= min(h, w):
            raise ValueError(f"padding {padding} must be smaller than the image ({h}x{w})")
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, views, h)
        cols = torch.arange(w, device=dev).expand(b, views, w)
        if padding:
            shift = torch.randint(
                -padding, padding + 1, (2, b, views, 1), generator=generator, device=dev
            )
            rows = _reflect(rows + shift[0], h)
            cols = _reflect(cols + shift[1], w)
        if flip:
            flipped = torch.rand(b, views, 1, generator=generator, device=dev) < 0.5
            cols = torch.where(flipped, cols.flip(-1), cols)
        batch = torch.arange(b, device=dev).view(b, 1, 1, 1, 1)
        channel = torch.arange(c, device=dev).view(1, 1, c, 1, 1)
        views_u8 = x[batch, channel, rows[:, :, None, :, None], cols[:, :, None, None, :]]
        return self._to_float(views_u8)

    def prepare_eval(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` to float32, scaled and standardised like training inputs."""
        return self._to_float(x)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self._scale + self._shift


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map indices in [-p, size - 1 + p] to their source pixel under reflect padding."""
    last = size - 1
    return last - (last - index.abs()).abs()
