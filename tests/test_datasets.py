"""The datasets registry and the publishers' formats: decoded, checked, trained on, listed."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import yaml

import bench.data.registry as registry
from bench.cli import main
from bench.config import DataConfig
from bench.data import count_train_examples, list_datasets, load_dataset, resolve_source
from bench.errors import ConfigError, DataError
from bench.listing import render_listing
from bench.results.records import read_records
from bench.suite import load_suite
from tests.publisher_files import write_cifar100, write_idx, write_imagenet, write_svhn
from tests.tiny_suite import TINY

#: A writer of tiny files per source, and where the files go under a test's folder.
WRITERS = {
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "mnist": write_idx,
    "fashion_mnist": write_idx,
    "imagenet32": lambda root: write_imagenet(root, 32),
    "imagenet64": lambda root: write_imagenet(root, 64),
}


def private_copy(tmp_path: Path, source: str, **changes) -> DataConfig:
    """A data config reading tiny generated files of ``source``'s format (no checksums)."""
    name = source.partition("[")[0]
    root = WRITERS[name](tmp_path / name)
    return DataConfig(source=source, root=str(root), verify_checksum=False, **changes)


def suite_file(tmp_path: Path, data: dict, **grid) -> Path:
    """``TINY`` on ``data``, one norm and one seed, sized for 40 training examples."""
    raw = yaml.safe_load(TINY)
    raw["data"] = data
    raw["training"].update(batch_size=16, max_physical_batch=16, steps=2, eval_batch_size=16)
    raw["privacy"]["delta"] = 1e-2
    raw["grid"].update(norm=["group_norm"], seed=[0], **grid)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("source", "shape", "classes", "flip", "n_train"),
    [
        ("cifar100", (3, 32, 32), 100, True, 40),
        ("cifar100[labels=coarse]", (3, 32, 32), 20, True, 40),
        ("svhn", (3, 32, 32), 10, False, 40),
        ("mnist", (1, 28, 28), 10, False, 40),
        ("mnist[pad=2]", (1, 32, 32), 10, False, 40),
        ("fashion_mnist", (1, 28, 28), 10, True, 40),
        ("imagenet32", (3, 32, 32), 1000, True, 40),
        ("imagenet64", (3, 64, 64), 1000, True, 40),
    ],
)
def test_each_publisher_format_decodes_to_what_its_dataset_declares(
    tmp_path, source, shape, classes, flip, n_train
):
    cfg = private_copy(tmp_path, source)
    data = load_dataset(cfg)
    assert data.train_x.dtype == torch.uint8 and tuple(data.train_x.shape[1:]) == shape
    assert data.channels == shape[0] and len(data.mean) == len(data.std) == shape[0]
    assert data.num_classes == classes and data.flip is flip
    assert len(data.train_y) == n_train == count_train_examples(cfg)
    assert int(data.train_y.min()) >= 0 and int(data.train_y.max()) < classes
    declared = resolve_source(source)
    assert declared.declared("image_size", cfg) == shape[1]
    assert declared.declared("channels", cfg) == shape[0]


def test_the_publishers_label_conventions_are_undone(tmp_path):
    """SVHN writes the digit 0 as label 10; downsampled ImageNet counts labels from 1."""
    svhn = load_dataset(private_copy(tmp_path, "svhn"))
    assert set(svhn.train_y.tolist()) <= set(range(10)) and 0 in svhn.train_y.tolist()
    imagenet = load_dataset(private_copy(tmp_path, "imagenet32"))
    assert 0 in imagenet.train_y.tolist()
    coarse = load_dataset(private_copy(tmp_path, "cifar100[labels=coarse]"))
    fine = load_dataset(private_copy(tmp_path, "cifar100"))
    assert torch.equal(coarse.train_y, fine.train_y // 5)  # as the tiny files were written
    assert coarse.classes[0] == "coarse_0" and fine.classes[0] == "fine_0"


def test_svhn_extra_joins_the_training_set(tmp_path):
    root = write_svhn(tmp_path / "svhn", n_train=40, n_test=20, n_extra=12)
    cfg = DataConfig(source="svhn[extra=true]", root=str(root), verify_checksum=False)
    assert len(load_dataset(cfg).train_y) == 52 == count_train_examples(cfg)
    assert len(load_dataset(dataclasses.replace(cfg, source="svhn")).train_y) == 40


def test_mnist_padding_is_zero_around_the_digit(tmp_path):
    plain = load_dataset(private_copy(tmp_path, "mnist"))
    padded = load_dataset(private_copy(tmp_path, "mnist[pad=2]"))
    assert torch.equal(padded.train_x[:, :, 2:-2, 2:-2], plain.train_x)
    assert int(padded.train_x[:, :, :2].sum()) == 0


def test_a_checksum_mismatch_names_the_file(tmp_path):
    cfg = dataclasses.replace(private_copy(tmp_path, "svhn"), verify_checksum=True)
    with pytest.raises(DataError, match=r"train_32x32\.mat: checksum mismatch.*verify_checksum"):
        load_dataset(cfg)


@pytest.mark.parametrize("source", ["cifar100", "svhn", "mnist", "fashion_mnist", "imagenet32"])
def test_missing_files_are_one_line_naming_where_and_how_exit_2(tmp_path, capsys, source):
    (tmp_path / "empty").mkdir()
    suite = suite_file(tmp_path, {"source": source, "root": str(tmp_path / "empty")})
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "empty") in err and "not found in" in err
    assert ("get " in err or "from " in err) and "Traceback" not in err


def test_an_unknown_source_is_a_config_error_with_the_closest_name(tmp_path):
    suite = suite_file(tmp_path, {"source": "cifar_100", "root": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"data\.source.*did you mean 'cifar100'"):
        load_suite(suite)


def test_statistics_for_the_wrong_number_of_channels_are_a_config_error(tmp_path):
    cfg = private_copy(tmp_path, "mnist")
    data = {"source": "mnist", "root": cfg.root, "verify_checksum": False, "mean": [0.5] * 3}
    with pytest.raises(ConfigError, match=r"data\.mean: has 3 values for mnist's 1-channel"):
        load_suite(suite_file(tmp_path, data))


def test_a_suite_fills_in_the_datasets_declared_statistics_and_name(tmp_path):
    """A grey dataset gets its one-channel statistics; a swept source gets each its own."""
    cfg = private_copy(tmp_path, "mnist")
    data = {"source": "mnist", "root": cfg.root, "verify_checksum": False}
    suite = suite_file(tmp_path, data, **{"data.source": ["mnist", "fashion_mnist"]})
    cells = load_suite(suite).cells()
    by_source = {c.data.source: c.data for c in cells}
    assert by_source["mnist"].mean == (0.1307,) and by_source["mnist"].dataset == "MNIST"
    assert by_source["fashion_mnist"].mean == (0.2860,)
    assert by_source["fashion_mnist"].dataset == "Fashion-MNIST"


def test_cifar10_suites_keep_their_run_keys(tmp_path):
    """Run keys computed before the registry (commit 68c1334): the statistics a cifar10 suite
    no longer spells out are CIFAR-10's constants again, and the new ``verify_checksum`` at its
    default stays out of the key."""
    suite = tmp_path / "suite.yaml"
    raw = yaml.safe_load(TINY)
    raw["data"] = {"source": "cifar10", "root": str(tmp_path / "nowhere"), "download": True}
    raw["grid"]["seed"] = [0]
    raw["privacy"]["delta"] = 1e-5
    suite.write_text(yaml.safe_dump(raw))
    assert [c.run_key for c in load_suite(suite).cells()] == CIFAR10_KEYS
    synthetic = tmp_path / "synthetic.yaml"
    synthetic.write_text(TINY)
    assert [c.run_key for c in load_suite(synthetic).cells()][:2] == SYNTHETIC_KEYS


#: ``TINY`` with ``data: {source: cifar10, ...}``, seed 0 and delta 1e-5, keyed by the code before
#: the registry (68c1334); and ``TINY``'s first two cells.
CIFAR10_KEYS = ["707d96b6f36b61de", "4bbc2b856c296f8e"]
SYNTHETIC_KEYS = ["ce3404b71baae23f", "0a9ed8c1d131e8a7"]


@pytest.mark.parametrize(
    ("source", "shape", "flip"),
    [
        ("cifar100", [3, 32, 32], True),
        ("svhn", [3, 32, 32], False),
        ("mnist", [1, 28, 28], False),
        ("fashion_mnist[pad=2]", [1, 32, 32], True),
        ("imagenet32", [3, 32, 32], True),
    ],
)
def test_a_cell_of_each_format_trains_through_the_runner(tmp_path, source, shape, flip):
    """A grey dataset trains a backbone with one input channel: a three-channel stem would
    refuse its (B, 1, H, W) batches."""
    cfg = private_copy(tmp_path, source)
    data = {"source": source, "root": cfg.root, "verify_checksum": False, "num_test": 16}
    suite = suite_file(tmp_path, data)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    (record,) = read_records(out / "records.jsonl").records
    assert record["status"] == "ok", record.get("error")
    assert record["image_shape"] == shape and record["augment_flip"] is flip
    assert record["config"]["data"]["source"] == source
    assert len(record["config"]["data"]["mean"]) == shape[0]
    assert record["epsilon_spent"] <= 8.0


# --- the entry-point route --------------------------------------------------------------------


@pytest.fixture(name="restore_datasets")
def fixture_restore_datasets(monkeypatch):
    """The registry as it was, after a test that registers a plugin's dataset."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", set(registry._PLUGINS_LOADED))
    yield
    sys.modules.pop("tests.dataset_plugin", None)


def _dist_info(root: Path, module: str) -> None:
    """An installed distribution whose ``dp_norm_bench.datasets`` entry point names ``module``."""
    info = root / "dpnb_test_datasets-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: dpnb_test_datasets\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nstripes = {module}\n")


def test_a_dataset_from_a_test_module_registers_through_the_entry_point(
    restore_datasets, tmp_path, monkeypatch
):
    sys.modules.pop("tests.dataset_plugin", None)
    _dist_info(tmp_path, "tests.dataset_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "grey_stripes" in list_datasets()
    assert "grey_stripes" in render_listing()
    suite = suite_file(tmp_path, {"source": "grey_stripes[classes=4]"})
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--no-progress"]) == 0
    (record,) = read_records(out / "records.jsonl").records
    assert record["status"] == "ok", record.get("error")
    assert record["image_shape"] == [1, 16, 16] and record["num_classes"] == 4
    assert record["dataset"] == "grey stripes"


def test_a_broken_dataset_entry_point_is_one_clear_error(restore_datasets, tmp_path, monkeypatch):
    (tmp_path / "dpnb_broken_data.py").write_text("raise ImportError('missing dependency')\n")
    _dist_info(tmp_path, "dpnb_broken_data")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DataError, match=r"'stripes' \(dpnb_broken_data.*missing dependency"):
        registry.load_plugins()


def test_bench_list_shows_every_dataset_with_what_it_implies():
    listing = render_listing()
    for name in ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagenet32"):
        assert name in listing
    assert "labels=fine (fine|coarse)" in listing
    line = next(x for x in listing.splitlines() if x.startswith("mnist "))
    assert "1x28" in line and " no " in line


def test_the_registry_refuses_a_second_dataset_of_the_same_name(restore_datasets):
    with pytest.raises(DataError, match="already registered"):
        registry.register_dataset("mnist")(lambda cfg: None)


def test_torchvision_downloads_only_where_download_is_on(tmp_path, monkeypatch):
    """``data.download: true`` runs torchvision's downloader, into its own layout; off, the
    missing files are an error and nothing is fetched."""
    import torchvision.datasets  # here: only this test replaces the downloader

    calls = []

    class FakeMNIST:
        resources = torchvision.datasets.MNIST.resources

        def __init__(self, root, download=False):
            calls.append(download)
            write_idx(Path(root) / "FakeMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    cfg = DataConfig(source="mnist", root=str(tmp_path), verify_checksum=False)
    with pytest.raises(DataError, match="not found in"):
        load_dataset(cfg)
    assert calls == []
    data = load_dataset(dataclasses.replace(cfg, download=True))
    assert calls == [True] and tuple(data.train_x.shape[1:]) == (1, 28, 28)
