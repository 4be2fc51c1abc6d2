"""Data: sources decoded once to uint8 tensors, then kept, sampled and augmented on the device."""

from bench.data.dataset import (
    CIFAR10_NUM_CLASSES,
    CIFAR10_NUM_TRAIN,
    Dataset,
    check_data,
    count_classes,
    count_train_examples,
    dataset_checksum,
    load_dataset,
)
from bench.data.device import DeviceData
from bench.data.imagefolder import IMAGE_SUFFIXES

__all__ = [
    "CIFAR10_NUM_CLASSES",
    "CIFAR10_NUM_TRAIN",
    "IMAGE_SUFFIXES",
    "Dataset",
    "DeviceData",
    "check_data",
    "count_classes",
    "count_train_examples",
    "dataset_checksum",
    "load_dataset",
]
