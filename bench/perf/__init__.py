"""Perf measurements: DP/non-DP step time and memory, the engine against Opacus, the GPU report.

``python -m bench.perf table`` prints, for every (backbone, norm), the time of one step of each
kind (`KINDS`: non-private, the engine's book-keeping DP step, Opacus hooks, Opacus ghost
clipping) at the same batch, the DP/non-DP time, memory and host-RSS ratios, and Opacus ghost /
book-keeping; each measurement runs in its own process so that its memory is its own (on the
CPU: the tensor peak of one more step, and the growth of the process's peak resident set; on a
GPU: ``torch.cuda.max_memory_allocated`` above the memory allocated after setup). Times are
medians of ``--reps`` steps after ``--warmup`` steps, each step ending with a device
synchronisation.

``python -m bench.perf opacus`` compares this engine (device-side Poisson sampling and
augmentation, book-keeping clipping) with Opacus as its tutorials run it (a DataLoader over the
training set with per-image transforms, ``PrivacyEngine.make_private`` with Poisson sampling,
hooks or ghost clipping) on the same model and expected batch, in images per second including
data loading.

``python -m bench.perf gpu-report --out DIR`` measures everything the GPU figures need, each
part time-boxed and failure-isolated, and writes ``DIR/README.md`` (`bench.perf.gpu_report`).

``python -m bench.perf gpu-window --budget-s 420 --out DIR`` is one device call: the CUDA tests,
the gpu-report sized to its share of the budget and a CIFAR-10 slice sized from the report's
step times, packed into the few files a device returns (`bench.perf.window`);
``gpu-window-unpack`` puts them into ``reports/``.

Modules: `bench.perf.kinds` (what is timed), `bench.perf.tables` (the two tables),
`bench.perf.gpu_report` (the report), `bench.perf.parts` (the report's parts, one module
each), `bench.perf.window` (the GPU window), `bench.perf.window_slice` (its CIFAR-10 slice),
`bench.perf.window_summary` (its summary and unpacking), `bench.perf.pack` (the device's file
limits), `bench.perf.__main__` (the command line).
"""

from bench.perf.kinds import (
    KINDS,
    make_step,
    measure_one,
    prepare_for_timing,
    random_device_data,
)
from bench.train.ghost import OpacusGhostStep

__all__ = [
    "KINDS",
    "OpacusGhostStep",
    "make_step",
    "measure_one",
    "prepare_for_timing",
    "random_device_data",
]
