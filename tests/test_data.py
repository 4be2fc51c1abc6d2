"""Tests of the data layer: Poisson sampling, device augmentation, splits and image folders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import bench.data.imagefolder
from bench.config import DataConfig
from bench.data import Dataset, DeviceData, count_train_examples, load_dataset
from bench.errors import DataError


def random_dataset(n: int, size: int = 8, seed: int = 0) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return Dataset(
        name="random",
        train_x=x,
        train_y=y,
        test_x=x[:4],
        test_y=y[:4],
        public_x=None,
        public_y=None,
        num_classes=10,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3),
    )


def row_hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in x}


# --- Poisson sampling -------------------------------------------------------------------------


def test_poisson_inclusion_is_independent_with_rate_q():
    data = DeviceData(random_dataset(200), "cpu")
    q, draws = 0.1, 3000
    assert data.sample_rate(20) == pytest.approx(q)
    gen = data.generator(0, "sampling")
    mask = torch.zeros(draws, 200)
    for i in range(draws):
        mask[i, data.poisson_batch(20, gen)] = 1
    # Each example's inclusion count is Binomial(draws, q): all within 5 standard deviations.
    sd = (draws * q * (1 - q)) ** 0.5
    assert ((mask.sum(0) - draws * q).abs() < 5 * sd).all()
    # Batch sizes are Binomial(N, q): mean N q = 20 and variance N q (1 - q) = 18; dependent
    # inclusions would move the variance.
    sizes = mask.sum(1)
    assert abs(sizes.mean().item() - 20) < 5 * (18 / draws) ** 0.5
    assert sizes.var().item() == pytest.approx(18, rel=0.15)
    # Pairwise inclusion correlations vanish (sd about 1/sqrt(draws) = 0.018).
    corr = torch.corrcoef(mask.T)
    off_diagonal = corr[~torch.eye(200, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.1


def test_poisson_batch_can_be_empty_and_flows_through_augmentation():
    data = DeviceData(random_dataset(1000), "cpu")
    gen = data.generator(0, "sampling")
    # q = 1/1000: a batch is empty with probability 0.999**1000 = 0.37.
    batches = [data.poisson_batch(1, gen) for _ in range(30)]
    empty = next(b for b in batches if b.numel() == 0)
    assert empty.dtype == torch.int64
    views = data.augment(data.train_x[empty], views=4, padding=2, flip=True, generator=gen)
    assert views.shape == (0, 4, 3, 8, 8)


def test_same_seed_gives_the_same_batches_and_augmentations():
    data = DeviceData(random_dataset(300), "cpu")

    def draw(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = data.generator(seed, "sampling")
        idx = data.poisson_batch(64, gen)
        return idx, data.augment(data.train_x[idx], views=3, padding=2, flip=True, generator=gen)

    (idx_a, aug_a), (idx_b, aug_b), (idx_c, _) = draw(5), draw(5), draw(6)
    assert torch.equal(idx_a, idx_b)
    assert torch.equal(aug_a, aug_b)
    assert not torch.equal(idx_a, idx_c)


# --- augmentation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("padding", "flip"), [(2, True), (2, False), (0, True)], ids=["crop-flip", "crop", "flip"]
)
def test_each_view_is_a_window_of_the_reflect_padded_image(padding, flip):
    data = DeviceData(random_dataset(6, size=8), "cpu", normalize=False)
    x = data.train_x
    out = data.augment(
        x, views=8, padding=padding, flip=flip, generator=data.generator(1, "sampling")
    )
    assert out.shape == (6, 8, 3, 8, 8)
    assert out.dtype == torch.float32
    pixels = (out * 255).round()
    padded = F.pad(x.float(), (padding,) * 4, mode="reflect") if padding else x.float()
    span = range(2 * padding + 1)
    for b in range(6):
        windows = [padded[b, :, dy : dy + 8, dx : dx + 8] for dy in span for dx in span]
        if flip:
            windows += [w.flip(-1) for w in windows]
        for v in range(8):
            assert any(torch.equal(pixels[b, v], w) for w in windows), (b, v)
        # Views are independent draws, so eight views of one image are not all the same.
        assert any(not torch.equal(pixels[b, 0], pixels[b, v]) for v in range(1, 8))


def test_augment_without_crop_or_flip_is_normalisation_only():
    data = DeviceData(random_dataset(5), "cpu")
    x = data.train_x
    out = data.augment(x, views=2, padding=0, flip=False, generator=data.generator(0, "sampling"))
    mean = torch.tensor((0.5, 0.4, 0.3)).view(3, 1, 1)
    std = torch.tensor((0.2, 0.25, 0.3)).view(3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    torch.testing.assert_close(out[:, 0], expected)
    torch.testing.assert_close(out[:, 1], expected)
    torch.testing.assert_close(data.prepare_eval(x), expected)


# --- splits and synthetic data ----------------------------------------------------------------


def test_public_split_is_disjoint_from_private_set_and_sizes_add_up():
    cfg = DataConfig(num_train=300, num_test=50, public_split=40)
    split = load_dataset(cfg)
    whole = load_dataset(DataConfig(num_train=300, num_test=50))
    assert split.public_x.shape[0] == 40
    assert split.train_x.shape[0] == 260
    assert split.public_y.shape == (40,)
    private, public = row_hashes(split.train_x), row_hashes(split.public_x)
    assert not private & public
    assert private | public == row_hashes(whole.train_x)
    assert count_train_examples(cfg) == 300


def test_synthetic_data_is_deterministic_in_split_seed():
    a = load_dataset(DataConfig(num_train=64, num_test=16, split_seed=3))
    b = load_dataset(DataConfig(num_train=64, num_test=16, split_seed=3))
    c = load_dataset(DataConfig(num_train=64, num_test=16, split_seed=4))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_synthetic_data_is_learnable_by_nearest_class_mean():
    data = load_dataset(DataConfig(num_train=1024, num_test=256, image_size=16))
    train, test = data.train_x.float().flatten(1), data.test_x.float().flatten(1)
    means = torch.stack([train[data.train_y == k].mean(0) for k in range(data.num_classes)])
    accuracy = (torch.cdist(test, means).argmin(1) == data.test_y).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (1024, 3, 16, 16)


def test_cifar10_missing_is_a_data_error_suggesting_download(tmp_path):
    with pytest.raises(DataError, match="download") as info:
        load_dataset(DataConfig(source="cifar10", root=str(tmp_path)))
    assert str(tmp_path) in str(info.value)


# --- image folders ----------------------------------------------------------------------------


def write_image(path: Path, size: tuple[int, int] = (8, 8), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return image


@pytest.fixture(name="image_folder")
def fixture_image_folder(tmp_path) -> Path:
    """``train/`` with 5 images per class, ``test/`` with 2, in classes cat and dog (PNG)."""
    root = tmp_path / "pets"
    seed = 0
    for split, count in (("train", 5), ("test", 2)):
        for cls in ("dog", "cat"):
            for i in range(count):
                write_image(root / split / cls / f"{i}.png", seed=seed)
                seed += 1
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def folder_config(root: Path, tmp_path: Path, **changes) -> DataConfig:
    return DataConfig(
        source="imagefolder", root=str(root), cache_dir=str(tmp_path / "cache"), **changes
    )


def test_imagefolder_decodes_pixels_and_sorted_class_labels(image_folder, tmp_path):
    data = load_dataset(folder_config(image_folder, tmp_path))
    assert data.classes == ("cat", "dog")
    assert data.name == "pets"
    assert data.train_x.shape == (10, 3, 8, 8) and data.test_x.shape == (4, 3, 8, 8)
    assert data.train_y.tolist() == [0] * 5 + [1] * 5
    first_cat = write_image(tmp_path / "again.png", seed=5)  # train/cat/0.png had seed 5
    assert torch.equal(data.train_x[0], first_cat)
    assert count_train_examples(folder_config(image_folder, tmp_path)) == 10


def test_imagefolder_decodes_jpeg_folders(tmp_path):
    root = tmp_path / "jpegs"
    colours = {"a": (200, 30, 30), "b": (20, 40, 220)}
    for split in ("train", "test"):
        for cls, colour in colours.items():
            for i in range(3):
                path = root / split / cls / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 6), colour).save(path, quality=95)
    data = load_dataset(folder_config(root, tmp_path))
    assert data.train_x.shape == (6, 3, 6, 8)
    mean_colour = data.train_x[data.train_y == 1].float().mean((0, 2, 3))
    torch.testing.assert_close(mean_colour, torch.tensor([20.0, 40.0, 220.0]), atol=6, rtol=0)


def test_imagefolder_second_load_reads_the_cache(image_folder, tmp_path, monkeypatch):
    cfg = folder_config(image_folder, tmp_path)
    first = load_dataset(cfg)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decoding(files):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(bench.data.imagefolder, "_decode_files", no_decoding)
    second = load_dataset(cfg)
    assert torch.equal(first.train_x, second.train_x)
    assert torch.equal(first.test_y, second.test_y)


def test_imagefolder_cache_is_rebuilt_when_a_file_is_added(image_folder, tmp_path, monkeypatch):
    cfg = folder_config(image_folder, tmp_path)
    load_dataset(cfg)
    write_image(image_folder / "train" / "dog" / "extra.jpg", seed=99)
    calls = []
    decode = bench.data.imagefolder._decode_files
    monkeypatch.setattr(
        bench.data.imagefolder, "_decode_files", lambda files: calls.append(1) or decode(files)
    )
    assert load_dataset(cfg).train_x.shape[0] == 11
    assert calls


def test_imagefolder_caps_and_public_split_are_deterministic(image_folder, tmp_path):
    cfg = folder_config(image_folder, tmp_path, num_train=8, num_test=3, public_split=2)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train_x.shape[0] == 6 and a.public_x.shape[0] == 2 and a.test_x.shape[0] == 3
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.public_x, b.public_x)
    assert count_train_examples(cfg) == 8


def _remove_test(root: Path) -> Path:
    shutil.rmtree(root / "test")
    return root / "test"


def _rename_test_class(root: Path) -> Path:
    (root / "test" / "dog").rename(root / "test" / "bird")
    return root / "test"


def _odd_size(root: Path) -> Path:
    path = root / "train" / "dog" / "9.png"
    write_image(path, size=(8, 10))
    return path


@pytest.mark.parametrize(
    "break_folder",
    [_remove_test, _rename_test_class, _odd_size],
    ids=["missing-test", "mismatched-classes", "mixed-sizes"],
)
def test_malformed_imagefolder_is_a_data_error_naming_the_path(
    image_folder, tmp_path, break_folder
):
    offending = break_folder(image_folder)
    with pytest.raises(DataError) as info:
        load_dataset(folder_config(image_folder, tmp_path))
    assert str(offending) in str(info.value)
