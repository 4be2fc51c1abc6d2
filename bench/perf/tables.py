"""Perf tables: DP/non-DP step time and memory per (backbone, norm); engine vs Opacus' tutorial.

`table` runs every measurement in its own process (``python -m bench.perf one``) so that
each one's host memory is its own; `opacus_tutorial_comparison` times this engine's data path
and step against Opacus' tutorial loop (hooks and ghost clipping) in images per second.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision.transforms.v2 as T
from opacus import PrivacyEngine
from tabulate import tabulate
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.backbones import create_backbone
from bench.data import DeviceData
from bench.measure import resolve_device, synchronize
from bench.perf.kinds import (
    CIFAR_MEAN,
    CIFAR_STD,
    KINDS,
    make_step,
    prepare_for_timing,
    random_device_data,
)
from bench.provenance import cpu_model, device_name

#: The ratio column comparing Opacus' fast path with the engine's, when both were timed.
GHOST_VS_BK = "Opacus ghost / book-keeping"
#: The tutorial's privacy settings, as `bench.perf.kinds.make_step` sets the engine's.
_TUTORIAL_DP = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "poisson_sampling": True}


def _subprocess(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.perf", "one", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio_row(res: dict[str, dict[str, Any]], kinds: tuple[str, ...]) -> list[str]:
    """One table row's measured cells: non-DP ms, then per DP kind its ms and its time, memory
    and host-RSS ratios to the non-private step, then Opacus ghost / book-keeping time."""
    base = res["nonprivate"]
    row = [f"{base['seconds'] * 1000:.0f}"]
    for k in kinds[1:]:
        r = res[k]
        row += [
            f"{r['seconds'] * 1000:.0f}",
            f"{r['seconds'] / base['seconds']:.2f}",
            f"{r['mem_bytes'] / max(base['mem_bytes'], 1):.2f}",
            f"{r['rss_bytes'] / max(base['rss_bytes'], 1):.2f}",
        ]
    if "dp" in kinds and "dp-opacus-ghost" in kinds:
        row.append(f"{res['dp-opacus-ghost']['seconds'] / res['dp']['seconds']:.2f}")
    return row


def ratio_headers(kinds: tuple[str, ...]) -> list[str]:
    headers = ["non-DP ms"]
    for k in kinds[1:]:
        headers += [f"{k} ms", f"{k} time ratio", f"{k} mem ratio", f"{k} host RSS ratio"]
    if "dp" in kinds and "dp-opacus-ghost" in kinds:
        headers.append(GHOST_VS_BK)
    return headers


def device_with_model(device: str) -> str:
    """A perf table's device as a record names it, with the CPU's model when it is the CPU:
    a table's ratios belong to the host that measured them."""
    return f"{device}, CPU model {cpu_model()}" if device.startswith("cpu") else device


def table(
    backbones: list[str],
    norm_names: list[str],
    *,
    batch: int,
    width: float,
    size: int,
    warmup: int,
    reps: int,
    kinds: tuple[str, ...] = KINDS,
) -> str:
    """Markdown table of DP/non-DP time and memory ratios (one subprocess per measurement)."""
    sizes = {"batch": batch, "width": width, "size": size, "warmup": warmup, "reps": reps}
    options = [f"--{k}={v}" for k, v in sizes.items()]
    rows = []
    base: dict[str, Any] = {}
    for b in backbones:
        for n in norm_names:
            res = {k: _subprocess([b, n, k, *options]) for k in kinds}
            base = res["nonprivate"]
            share = min(r.get("cpu_share", 1.0) for r in res.values())
            rows.append([b, n, *ratio_row(res, kinds), f"{share:.2f}"])
            print(
                f"  {b} {n}: " + ", ".join(f"{k} {res[k]['seconds']:.3f}s" for k in kinds),
                file=sys.stderr,
                flush=True,
            )
    probe = [backbones[0], norm_names[0], "nonprivate", "--batch=2", f"--width={width}"]
    device = device_with_model(_subprocess([*probe, "--warmup=0", "--reps=1"])["device"])
    return (
        f"device: {device}; batch {batch}, width {width}, {size}x{size}, median of {reps} "
        f"steps after {warmup} warm-up; mem: {base['mem_measure']}; host RSS: growth of the "
        "process's peak resident set over the timed steps; CPU share: the lowest, over the "
        "row's measurements, of process CPU time per wall second and thread during the timed "
        "steps (about 1 when the CPU was the measurement's alone)\n\n"
        + tabulate(
            rows, ["backbone", "norm", *ratio_headers(kinds), "CPU share"], tablefmt="github"
        )
    )


def _engine_loop(
    backbone: str, norm: str, data: DeviceData, *, batch: int, width: float, device: torch.device
) -> Callable[[], int]:
    """One step of this engine: Poisson sampling and augmentation on the device, then the
    book-keeping DP step; returns the images it took."""
    step, _, _ = make_step(backbone, norm, "dp", batch=batch, width=width, device=device)
    gen = data.generator(0, "sampling")

    def engine_step() -> int:
        idx = data.poisson_batch(batch, gen)
        x = data.augment(data.train_x[idx], views=1, padding=4, flip=True, generator=gen)
        step(x, data.train_y[idx])
        return idx.numel()

    return engine_step


class _Images(Dataset):
    """CPU uint8 images through the tutorial's per-image torchvision transforms."""

    def __init__(self, u8: torch.Tensor, labels: torch.Tensor):
        self.u8, self.labels = u8, labels
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4, padding_mode="reflect"),
                T.RandomHorizontalFlip(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(CIFAR_MEAN, CIFAR_STD),
            ]
        )

    def __len__(self) -> int:
        return self.u8.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.u8[i]), self.labels[i]


def _tutorial_loop(
    backbone: str,
    norm: str,
    mode: str,
    images: _Images,
    *,
    batch: int,
    width: float,
    workers: int,
    device: torch.device,
) -> Callable[[], int]:
    """One step of Opacus' tutorial loop (``mode``: ``hooks`` or ``ghost``), torchvision
    transforms per image in a DataLoader; returns the images it took."""
    torch.manual_seed(0)
    model = create_backbone(backbone, norm=norm, width=width).to(device)
    prepare_for_timing(model, norm, 32, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(images, batch_size=batch, num_workers=workers)
    extra = {"criterion": nn.CrossEntropyLoss()} if mode == "ghost" else {}
    private = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        grad_sample_mode=mode,
        **_TUTORIAL_DP,
        **extra,
    )
    if mode == "ghost":
        model, optimizer, criterion, loader = private
    else:
        (model, optimizer, loader), criterion = private, nn.CrossEntropyLoss()
    batches = iter(loader)

    def opacus_step() -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()
        return x.shape[0]

    return opacus_step


def _images_per_second(
    step: Callable[[], int], *, steps: int, warmup: int, device: torch.device
) -> float:
    """Images/s of ``steps`` calls of ``step`` after ``warmup`` untimed ones, between two device
    synchronisations."""
    for _ in range(warmup):
        step()
    synchronize(device)
    t0, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step()
    synchronize(device)
    return images / (time.perf_counter() - t0)


def opacus_tutorial_comparison(
    backbone: str,
    norm: str,
    *,
    batch: int,
    steps: int,
    warmup: int,
    n: int = 10_000,
    width: float = 1.0,
    workers: int = 0,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Images/s of this engine and of Opacus' tutorial loop on the same model and batch.

    Timed: ``steps`` steps after ``warmup``, data loading included, between two device
    synchronisations. The engine samples and augments on the device and clips with its
    book-keeping step; the tutorial (``opacus_tutorial_img_s``: hooks;
    ``opacus_tutorial_ghost_img_s``: ``grad_sample_mode="ghost"``) loads batches through a
    DataLoader with per-image torchvision transforms (``workers`` worker processes) and
    ``PrivacyEngine.make_private`` with Poisson sampling.
    """
    device = device or resolve_device()
    data = random_device_data(n, device)
    engine = _engine_loop(backbone, norm, data, batch=batch, width=width, device=device)
    images = _Images(data.train_x.cpu(), data.train_y.cpu())  # the same images, on the CPU
    loop = {"batch": batch, "width": width, "workers": workers, "device": device}
    timing = {"steps": steps, "warmup": warmup, "device": device}
    result: dict[str, Any] = {}
    for name, make in (
        ("engine_img_s", lambda: engine),
        ("opacus_tutorial_img_s", lambda: _tutorial_loop(backbone, norm, "hooks", images, **loop)),
        (
            "opacus_tutorial_ghost_img_s",
            lambda: _tutorial_loop(backbone, norm, "ghost", images, **loop),
        ),
    ):
        result[name] = _images_per_second(make(), **timing)
    result["speedup"] = result["engine_img_s"] / result["opacus_tutorial_img_s"]
    result["speedup_vs_ghost"] = result["engine_img_s"] / result["opacus_tutorial_ghost_img_s"]
    result["device"] = device_name(device)
    return result
