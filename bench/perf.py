"""Perf measurements: DP/non-DP step time and memory per (backbone, norm); Opacus tutorial loop.

``python -m bench.perf table`` prints, for every (backbone, norm), the time of one DP step and
one non-private step at the same batch, their ratio, and the ratio of peak memory; each
measurement runs in its own process so that memory is its own (on the CPU: growth of the
process's peak resident set over the steps above its level after setup; on a GPU:
``torch.cuda.max_memory_allocated`` above the memory allocated after setup). Times are medians
of ``--reps`` steps after ``--warmup`` steps, each step ending with a device synchronisation.

``python -m bench.perf opacus`` compares this engine (device-side Poisson sampling and
augmentation, book-keeping clipping) with Opacus as its tutorials run it (a DataLoader over the
training set with per-image transforms, ``PrivacyEngine.make_private`` with Poisson sampling,
hooks) on the same model and expected batch, in images per second including data loading.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

import norms
from bench.backbones import create_backbone, list_backbones
from bench.config import DEFAULT_NORM
from bench.data import Dataset, DeviceData
from bench.measure import (
    device_name,
    peak_memory,
    process_peak_rss,
    reset_peak_memory,
    resolve_device,
    synchronize,
    tensor_peak_bytes,
)
from bench.steps import DPSGDStep, SGDStep, make_optimizer
from norms.lifecycle import synthetic_run_data

KINDS = ("nonprivate", "dp", "dp-opacus-hooks")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def random_device_data(n: int, device: torch.device) -> DeviceData:
    """A CIFAR-shaped set of ``n`` random uint8 images on ``device``, for timing the data path."""
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    dataset = Dataset(
        name="random",
        train_x=u8,
        train_y=labels,
        test_x=u8[:8],
        test_y=labels[:8],
        public_x=None,
        public_y=None,
        num_classes=10,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    return DeviceData(dataset, device)


def _prepare(model: torch.nn.Module, norm: str, size: int, device: torch.device) -> None:
    """Run the norm's preparation hook (statistics) on random images: timing needs a prepared
    model, not meaningful statistics."""
    norms.resolve_norm(norm).prepare(model, synthetic_run_data((3, size, size), device=device))


def make_step(
    backbone: str,
    norm: str,
    kind: str,
    *,
    batch: int,
    width: float = 1.0,
    size: int = 32,
    device: torch.device | None = None,
    precision: str = "fp32",
):
    """A ready step and a fixed batch: ``(step, x, y)`` with x of shape (batch, 1, 3, size, size).

    ``kind``: ``nonprivate``, ``dp`` (the engine's default book-keeping path) or
    ``dp-opacus-hooks`` (Opacus' per-sample-gradient hooks), noise multiplier 1, clip 1.
    """
    device = device or resolve_device()
    torch.manual_seed(0)
    model = create_backbone(backbone, norm=norm, width=width).to(device)
    _prepare(model, norm, size, device)
    model.train()
    opt = make_optimizer(model.parameters(), lr=0.1)
    if kind == "nonprivate":
        step: Any = SGDStep(model, opt, max_physical_batch=batch, precision=precision)
    else:
        mode = "bk" if kind == "dp" else "hooks"
        step = DPSGDStep(
            model,
            opt,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            max_physical_batch=batch,
            mode=mode,
            precision=precision,
        )
    x = torch.randn(batch, 1, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return step, x, y


def measure_one(
    backbone: str,
    norm: str,
    kind: str,
    *,
    batch: int,
    width: float,
    size: int,
    warmup: int,
    reps: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Median step time and peak memory of one configuration, in this process."""
    device = resolve_device()
    step, x, y = make_step(
        backbone,
        norm,
        kind,
        batch=batch,
        width=width,
        size=size,
        device=device,
        precision=precision,
    )
    # The step's own memory: peak above what the model, data and batch hold after setup,
    # measured from before the first step (its peak is the one that matters).
    synchronize(device)
    rss_before = process_peak_rss()
    reset_peak_memory(device)
    allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    for _ in range(warmup):
        step(x, y)
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        step(x, y)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = peak_memory(device)
    rss_growth = process_peak_rss() - rss_before
    if peak is not None:
        step_mem = peak - allocated_before
        mem_measure = "cuda max_memory_allocated above the memory allocated after setup"
    else:  # one more, untimed step with every tensor allocation tracked
        step_mem = tensor_peak_bytes(lambda: step(x, y))
        mem_measure = "peak bytes of tensors the step allocated and held (bench.measure.TensorPeak)"
    return {
        "backbone": backbone,
        "norm": norm,
        "kind": kind,
        "batch": batch,
        "width": width,
        "seconds": statistics.median(times),
        "mem_bytes": step_mem,
        "mem_measure": mem_measure,
        # The process's peak RSS growth over the timed steps: allocator caching and
        # fragmentation included, so noisier than mem_bytes.
        "rss_bytes": rss_growth,
        "device": device_name(device),
    }


def _subprocess(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.perf", "one", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    from tabulate import tabulate

    rows = []
    for b in backbones:
        for n in norm_names:
            res = {
                k: _subprocess(
                    [
                        b,
                        n,
                        k,
                        f"--batch={batch}",
                        f"--width={width}",
                        f"--size={size}",
                        f"--warmup={warmup}",
                        f"--reps={reps}",
                    ]
                )
                for k in kinds
            }
            base = res["nonprivate"]
            row = [b, n, f"{base['seconds'] * 1000:.0f}"]
            for k in kinds[1:]:
                r = res[k]
                row += [
                    f"{r['seconds'] * 1000:.0f}",
                    f"{r['seconds'] / base['seconds']:.2f}",
                    f"{r['mem_bytes'] / max(base['mem_bytes'], 1):.2f}",
                    f"{r['rss_bytes'] / max(base['rss_bytes'], 1):.2f}",
                ]
            rows.append(row)
            print(
                f"  {b} {n}: " + ", ".join(f"{k} {res[k]['seconds']:.3f}s" for k in kinds),
                file=sys.stderr,
                flush=True,
            )
    headers = ["backbone", "norm", "non-DP ms"]
    for k in kinds[1:]:
        headers += [f"{k} ms", f"{k} time ratio", f"{k} mem ratio", f"{k} host RSS ratio"]
    device = _subprocess(
        [
            backbones[0],
            norm_names[0],
            "nonprivate",
            "--batch=2",
            f"--width={width}",
            "--warmup=0",
            "--reps=1",
        ]
    )["device"]
    return (
        f"device: {device}; batch {batch}, width {width}, {size}x{size}, median of {reps} "
        f"steps after {warmup} warm-up; mem: {base['mem_measure']}; host RSS: growth of the "
        "process's peak resident set over the timed steps\n\n"
        + tabulate(rows, headers, tablefmt="github")
    )


def opacus_tutorial_comparison(
    backbone: str, norm: str, *, batch: int, steps: int, warmup: int, n: int = 10_000
) -> dict[str, float]:
    """Images/s of this engine and of Opacus' tutorial loop on the same model and batch."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, Dataset

    device = resolve_device()
    mean, std = CIFAR_MEAN, CIFAR_STD
    # This engine: data on the device, Poisson sampling and augmentation there.
    step, _, _ = make_step(backbone, norm, "dp", batch=batch, device=device)
    data = random_device_data(n, device)
    u8, labels = data.train_x.cpu(), data.train_y.cpu()
    gen = data.generator(0, "sampling")

    def engine_step() -> int:
        idx = data.poisson_batch(batch, gen)
        x = data.augment(data.train_x[idx], views=1, padding=4, flip=True, generator=gen)
        step(x, data.train_y[idx])
        return idx.numel()

    # Opacus' tutorial: torchvision transforms per image in a DataLoader, make_private, hooks.
    import torchvision.transforms.v2 as T

    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4, padding_mode="reflect"),
            T.RandomHorizontalFlip(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean, std),
        ]
    )

    class Images(Dataset):
        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int):
            return transform(u8[i]), labels[i]

    torch.manual_seed(0)
    model = create_backbone(backbone, norm=norm).to(device)
    _prepare(model, norm, 32, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(Images(), batch_size=batch, num_workers=0)
    model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
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
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        return x.shape[0]

    result = {}
    for name, fn in (("engine_img_s", engine_step), ("opacus_tutorial_img_s", opacus_step)):
        for _ in range(warmup):
            fn()
        synchronize(device)
        t0, images = time.perf_counter(), 0
        for _ in range(steps):
            images += fn()
        synchronize(device)
        result[name] = images / (time.perf_counter() - t0)
    result["speedup"] = result["engine_img_s"] / result["opacus_tutorial_img_s"]
    result["device"] = device_name(device)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one", help="measure one configuration (prints JSON)")
    one.add_argument("backbone")
    one.add_argument("norm")
    one.add_argument("kind", choices=KINDS)
    tab = sub.add_parser("table", help="DP/non-DP time and memory ratios, every pair")
    opa = sub.add_parser("opacus", help="this engine against Opacus' tutorial loop")
    for p in (one, tab, opa):
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--warmup", type=int, default=1)
    for p in (one, tab):
        p.add_argument("--width", type=float, default=1.0)
        p.add_argument("--size", type=int, default=32)
        p.add_argument("--reps", type=int, default=3)
    tab.add_argument("--backbones", default=",".join(list_backbones()))
    tab.add_argument("--norms", default=",".join(norms.list_norms()))
    tab.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="which steps to time (nonprivate is always included)",
    )
    opa.add_argument("--backbone", default="wrn16_4")
    opa.add_argument("--norm", default=DEFAULT_NORM)
    opa.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.cmd == "one":
        print(
            json.dumps(
                measure_one(
                    args.backbone,
                    args.norm,
                    args.kind,
                    batch=args.batch,
                    width=args.width,
                    size=args.size,
                    warmup=args.warmup,
                    reps=args.reps,
                )
            )
        )
    elif args.cmd == "table":
        kinds = ("nonprivate", *[k for k in args.kinds.split(",") if k != "nonprivate"])
        print(
            table(
                args.backbones.split(","),
                args.norms.split(","),
                kinds=kinds,
                batch=args.batch,
                width=args.width,
                size=args.size,
                warmup=args.warmup,
                reps=args.reps,
            )
        )
    else:
        print(
            json.dumps(
                opacus_tutorial_comparison(
                    args.backbone, args.norm, batch=args.batch, steps=args.steps, warmup=args.warmup
                )
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
