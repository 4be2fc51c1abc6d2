"""Data: sources decoded once to uint8 tensors, then kept, sampled and augmented on the device."""

from bench.data.dataset import (
    Dataset,
    check_data,
    count_classes,
    count_train_examples,
    dataset_checksum,
    image_shape,
    load_dataset,
)
from bench.data.device import DeviceData
from bench.data.imagefolder import IMAGE_SUFFIXES
from bench.data.registry import (
    ENTRY_POINT_GROUP,
    DatasetSpec,
    Decoded,
    ResolvedDataset,
    get_dataset,
    list_datasets,
    register_dataset,
    resolve_data_config,
    resolve_source,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "IMAGE_SUFFIXES",
    "Dataset",
    "DatasetSpec",
    "Decoded",
    "DeviceData",
    "ResolvedDataset",
    "check_data",
    "count_classes",
    "count_train_examples",
    "dataset_checksum",
    "get_dataset",
    "image_shape",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "resolve_data_config",
    "resolve_source",
]
