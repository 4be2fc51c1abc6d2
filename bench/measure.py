"""Measurement hygiene: device choice and sync, step timers, peak memory, provenance."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a timer reads work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """What a record calls the hardware: the GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu {cpu} ({torch.get_num_threads()} threads)"


@dataclass
class StepTimer:
    """Steady-state throughput of repeated steps.

    Each step is timed between two device synchronisations; the first ``warmup`` steps
    (allocator growth, cuDNN autotuning, lazy initialisation) are excluded. What a step
    contains is up to the caller: the engine times sampling, augmentation, forward, backward,
    clipping, noise, the update and the EMA, and excludes evaluation and setup.
    """

    device: torch.device
    warmup: int
    images: int = 0
    seconds: float = 0.0
    steps: int = 0
    _seen: int = field(default=0, repr=False)

    @contextmanager
    def step(self, images: list[int]) -> Iterator[None]:
        """Time one step; append to ``images`` the number of images it processed."""
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        self._seen += 1
        if self._seen > self.warmup:
            self.images += sum(images)
            self.seconds += elapsed
            self.steps += 1

    @property
    def throughput(self) -> float | None:
        """Images per second over the timed steps, None when no step was timed."""
        return self.images / self.seconds if self.seconds > 0 else None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes allocated by tensors on a CUDA device since the last reset; None on the CPU.

    The CPU has no per-run tensor allocator statistics; see `process_peak_rss`.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def process_peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB).

    Monotone over the process's life: it includes the interpreter, libraries, the data and
    every earlier run of a sweep, so it bounds a run's memory from above and is not a
    per-run figure.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def git_commit() -> str | None:
    """The repository's commit, with ``-dirty`` when the work tree has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty.strip() else "")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(device: torch.device) -> dict[str, str | None]:
    """Versions, commit and hardware, stored in every record."""
    return {
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "opacus": _version("opacus"),
        "timm": _version("timm"),
        "python": platform.python_version(),
        "device_name": device_name(device),
        "hostname": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
