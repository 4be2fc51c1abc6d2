"""One cell on W local processes (``bench run --nproc W``): spawn them, join them, and bring
rank 0's record fields (or the error every rank agreed on) back to the runner.

The ranks meet through a file in a private temporary folder (torch.distributed's FileStore):
no port to pick, so no race with other jobs on the machine. ``torch.multiprocessing`` spawns
and joins them and kills the rest when one dies; what it does not cover is bringing a result
or a typed exception back, which each rank does through a pickle beside the store.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.config import Cell
from bench.errors import ConfigError
from bench.train import cell as training
from bench.train.ranks import SINGLE, Ranks, current
from bench.train.setup import check_ranks

#: Seconds a collective may wait for the other ranks before the cell is given up.
DEFAULT_TIMEOUT_S = 600.0


class RankLost(RuntimeError):
    """A process of a multi-process cell died, hung past the collective timeout, or failed
    where the others did not: an infrastructure failure, recorded ``interrupted``."""


def check_nproc(nproc: int, device: torch.device) -> None:
    """Refuse a process count the device cannot hold, in one line.

    Raises:
        ConfigError: ``nproc`` below 1, more than the visible GPUs on CUDA, or more than the
            CPU cores on the CPU.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {nproc}")
    if device.type == "cuda":
        present = torch.cuda.device_count()
        if nproc > present:
            raise ConfigError(
                f"--nproc {nproc}: only {present} GPU(s) visible; one process per GPU"
            )
    elif nproc > (os.cpu_count() or 1):
        raise ConfigError(f"--nproc {nproc}: only {os.cpu_count()} CPU core(s) on this machine")


#: The variables torch.distributed's ``env://`` initialisation reads (torchrun, and submitit's
#: ``TorchDistributedEnvironment`` on SLURM, set them).
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_ranks(timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """The ranks a launcher set up in this process's environment (``torchrun``, a SLURM job of
    several tasks), the default process group joined once; `SINGLE` when none is set.

    Raises:
        ConfigError: Some of `LAUNCHER_VARIABLES` set and not the others.
    """
    present = [k for k in LAUNCHER_VARIABLES if k in os.environ]
    if not present or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return SINGLE
    missing = [k for k in LAUNCHER_VARIABLES if k not in os.environ]
    if missing:
        raise ConfigError(
            f"the torch.distributed environment is half set: {', '.join(present)} set, "
            f"{', '.join(missing)} not (launch with torchrun, or unset them)"
        )
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return current()


def launched_device(device: torch.device) -> torch.device:
    """A launched rank's device: its node-local GPU (``LOCAL_RANK``) on CUDA."""
    return rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    """Wait for every launched rank (nothing on one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank ``rank``'s device: its own GPU on CUDA, the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


#: What the CPU processes' fork server imports once, so that every rank (and every worker of
#: `bench.sweep.local`'s pool) after it starts without importing torch, Opacus and timm again
#: (seconds each on 2 cores, for every cell's ranks).
_PRELOAD = ["bench.sweep.processes", "bench.sweep.local"]


def start_method(device: torch.device) -> str:
    """How the ranks and CPU workers start: on the CPU, forked from a fork server that imported
    the training code once (``forkserver``: a clean process that has run no torch op, so no
    thread pool is forked); on CUDA, ``spawn``, since a process forked after anything touched
    CUDA cannot use it, and there a process's import is small beside its training."""
    if device.type != "cpu" or "forkserver" not in mp.get_all_start_methods():
        return "spawn"
    mp.set_forkserver_preload(_PRELOAD)
    return "forkserver"


def _worker(
    rank: int,
    world: int,
    folder: str,
    cell: Cell,
    device: str,
    kw: dict,
    timeout_s: float,
    threads: int | None,
):
    """One rank: join the group, train, and leave its outcome in ``rank<r>.pkl``."""
    dev = rank_device(torch.device(device), rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    else:  # W processes share the cores; one pool of threads each would oversubscribe them
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "nccl" if dev.type == "cuda" else "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        outcome: tuple[str, Any] = (
            "ok",
            training.train_cell(cell, dev, ranks=Ranks(rank, world), **kw),
        )
    except BaseException as err:  # every outcome goes back to the parent, typed
        outcome = ("raised", err)
    finally:
        dist.destroy_process_group()
    try:
        payload = pickle.dumps(outcome)
    except Exception:  # an exception that does not pickle comes back as its text
        payload = pickle.dumps(
            ("raised", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}"))
        )
    (Path(folder) / f"rank{rank}.pkl").write_bytes(payload)


def train_cell_on(
    nproc: int,
    cell: Cell,
    device: torch.device,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """`bench.train.cell.train_cell` on ``nproc`` processes: rank 0's record fields.

    On the CPU each process uses ``threads`` intra-op threads (default: the cores shared
    out). With as many threads per process as one process used, the record is that one
    process's, bit for bit (`bench.train.ranks`); with other thread counts, the same up to
    the rounding that changing the thread count causes on one process.

    An error raised on every rank (a diverged run, a config error: the ranks compute the same
    thing, so they fail alike) is raised here as itself.

    Raises:
        RankLost: A rank died, timed out in a collective, or failed alone.
        ConfigError: A cell that cannot run on ``nproc`` processes (`check_ranks`), before
            any process starts (every rank checks again, for launchers such as torchrun).
    """
    check_ranks(cell, Ranks(0, nproc))
    with tempfile.TemporaryDirectory(prefix="bench-ranks-") as folder:
        args = (nproc, folder, cell, str(device), kw, timeout_s, threads)
        try:
            mp.start_processes(
                _worker, args=args, nprocs=nproc, join=True, start_method=start_method(device)
            )
        except mp.ProcessException as err:
            raise RankLost(
                f"a process of the cell ended abnormally: {err}".splitlines()[0]
            ) from None
        outcomes = [
            pickle.loads((Path(folder) / f"rank{r}.pkl").read_bytes()) for r in range(nproc)
        ]
    kinds = {"ok" if k == "ok" else type(v).__name__ for k, v in outcomes}
    kind, value = outcomes[0]
    if kind == "ok" and len(kinds) == 1:
        return value
    if kind == "raised" and len(kinds) == 1:
        raise value
    failed = [
        f"rank {r}: {type(v).__name__}: {v}" for r, (k, v) in enumerate(outcomes) if k != "ok"
    ]
    raise RankLost("the ranks of the cell disagreed: " + "; ".join(failed))
