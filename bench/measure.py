"""Measurement hygiene: device choice and sync, step timers, peak memory."""

from __future__ import annotations

import functools
import math
import resource
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.errors import DeviceError

#: What ``--device`` accepts, for its error message.
DEVICES_ALLOWED = "auto, cpu, cuda, cuda:N (N a GPU index) or mps, where this machine has them"


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU.

    Raises:
        DeviceError: ``name`` is no device, or one this machine lacks (CUDA without a GPU, a
            GPU index past the last one, MPS off Apple silicon): one line before anything runs,
            rather than a traceback from the first tensor moved there.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(
            f"--device: unknown device {name!r}; allowed: {DEVICES_ALLOWED}"
        ) from None
    missing = _missing(device)
    if missing:
        raise DeviceError(f"--device: {name!r} is not available here: {missing}")
    return device


def _missing(device: torch.device) -> str | None:
    """Why this machine cannot run on ``device``, or None when it can."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            return "no CUDA GPU is visible (use --device cpu or auto)"
        if device.index is not None and device.index >= count:
            return f"{count} CUDA GPU(s) are visible, indices 0 to {count - 1}"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "MPS is not available"
    if device.type == "cpu":
        return None
    return f"the benchmark runs on {DEVICES_ALLOWED}"


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so a timer reads work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    _per_step: list[tuple[int, float]] = field(default_factory=list, repr=False)

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
            self._per_step.append((sum(images), elapsed))

    @property
    def throughput(self) -> float | None:
        """Images per second over the timed steps, None when no step was timed."""
        return self.images / self.seconds if self.seconds > 0 else None

    @property
    def relative_se(self) -> float | None:
        """Relative standard error of `throughput` (a ratio of sums, by the delta method):
        sqrt(sum r_i^2 / (n (n - 1))) / mean(t) / R with r_i = images_i - R t_i; None with
        fewer than two timed steps. Step-to-step jitter and, on the DP side, the Poisson
        batch size both enter it."""
        n, rate = len(self._per_step), self.throughput
        if n < 2 or not rate:
            return None
        residuals = math.fsum((i - rate * t) ** 2 for i, t in self._per_step)
        return math.sqrt(residuals / (n * (n - 1))) / (self.seconds / n) / rate


def allocated_memory(device: torch.device) -> int | None:
    """Bytes held by live tensors on a CUDA device now; None on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return None


@dataclass
class StepMemory:
    """Peak device memory of the steps run since `start`, above what was held at `start`.

    Started after the dataset, the model, its EMA and the optimiser are on the device and
    before the first step, so `above` is the steps' own peak (activations, gradients, per-example
    quantities, optimiser state created by the first step) and `absolute` the allocator's
    whole peak. Both None on the CPU, which keeps no allocator statistics.
    """

    device: torch.device
    baseline: int | None = None

    def start(self) -> StepMemory:
        reset_peak_memory(self.device)
        self.baseline = allocated_memory(self.device)
        return self

    @property
    def absolute(self) -> int | None:
        return peak_memory(self.device)

    @property
    def above(self) -> int | None:
        peak = self.absolute
        return None if peak is None or self.baseline is None else peak - self.baseline


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


class TensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storage that code run inside this context allocated and still held.

    The CPU has no allocator statistics, so this is the CPU's analogue of CUDA's
    ``max_memory_allocated`` for one step: every operator's output whose storage is new (not a
    view or in-place result of an input) is counted from its creation until its storage is
    freed. Tensors that existed before (model, optimiser state, the batch) are not counted;
    scratch memory a kernel frees before returning is not seen. Every operator goes through
    Python while active, so time a step without it and measure its memory in a separate call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._held: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in given or key in self._held:
                continue
            self._held[key] = weakref.ref(storage, functools.partial(self._freed, key, nbytes))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out

    def _freed(self, key: int, nbytes: int, _ref: weakref.ref) -> None:
        self.live -= nbytes
        self._held.pop(key, None)


def tensor_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak tensor bytes ``fn()`` allocated above what existed before it (see `TensorPeak`)."""
    with TensorPeak() as tracker:
        fn()
    return tracker.peak


def process_peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB).

    Monotone over the process's life: it includes the interpreter, libraries, the data and
    every earlier run of a sweep, so it bounds a run's memory from above and is not a
    per-run figure.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
