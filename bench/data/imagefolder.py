"""The imagefolder source: ``root/{train,test}/<class>/*`` decoded once, then read from a cache."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import atomic
from bench.config import DataConfig, sha256_text
from bench.errors import DataError

#: File suffixes an imagefolder source reads (what ``torchvision.io.decode_image`` decodes).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")

_JPEG_SUFFIXES = (".jpg", ".jpeg")
# Bump when the cache layout changes, so old files are ignored rather than misread.
_CACHE_FORMAT = 1
_DECODE_CHUNK = 512
_TV_DEPRECATION = "The image decoding and encoding capabilities of TorchVision are deprecated"


def load_imagefolder(cfg: DataConfig) -> tuple:
    """Decode ``root/{train,test}/<class>/*`` once, then read the cached tensors."""
    root = folder_root(cfg)
    classes = class_names(root / "train")
    test_classes = class_names(root / "test")
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
            found = image_files(root / split / name)
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


def folder_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise DataError("an imagefolder source needs data.root")
    root = Path(cfg.root).expanduser()
    if not (root / "train").is_dir():
        raise DataError(
            f"{root}: no train/ folder; an imagefolder root holds train/<class>/* and "
            "test/<class>/*"
        )
    return root


def class_names(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing; an imagefolder root needs train/ and test/")
    # Hidden folders (.ipynb_checkpoints, ...) are tool debris, not classes.
    names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")
    if not names:
        raise DataError(f"{split_dir}: no class folders")
    return names


def image_files(class_dir: Path) -> list[Path]:
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
    try:  # here, not at the top: a torchvision without its codecs falls back to PIL
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
