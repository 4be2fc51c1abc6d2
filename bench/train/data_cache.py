"""The decoded datasets and their checksums, once per process for every cell that shares them."""

from __future__ import annotations

import functools

from bench.config import DataConfig
from bench.data import Dataset, dataset_checksum, load_dataset


@functools.lru_cache(maxsize=4)
def cached_dataset(cfg: DataConfig) -> Dataset:
    """`load_dataset`, decoded once per process for all the cells that share a data config."""
    return load_dataset(cfg)


@functools.lru_cache(maxsize=4)
def cached_checksum(cfg: DataConfig) -> str:
    """`bench.data.dataset_checksum` of `cached_dataset`, hashed once per process."""
    return dataset_checksum(cached_dataset(cfg))
