"""The typed options of a sweep (what ``bench run``'s flags set), frozen and documented."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UsageError


def _at_least_one(flag: str, value: int) -> None:
    """Refuse a process count below 1 in one line: it would run no process, or, on SLURM,
    one task while the estimate and the time limit counted none."""
    if value < 1:
        raise UsageError(f"{flag}: must be at least 1 (processes), got {value}")


@dataclass(frozen=True)
class SlurmOptions:
    """How the ``slurm`` executor submits its jobs (submitit parameters and time sizing).

    ``bench run`` sets each field from the flag named after it (``--slurm-time-min``).
    """

    partition: str | None = None
    """SLURM partition; None: the cluster's default."""

    time_min: int | None = None
    """Time limit of each job in minutes; None: sized from the steps (`bench.sweep.slurm`)."""

    gpus: int | None = None
    """GPUs each job asks for; None: submitit's default."""

    parallel: int | None = None
    """Most array jobs running at once; None: submitit's default."""

    cluster: str | None = None
    """``local`` or ``debug`` emulate the cluster with submitit's executors on this machine;
    None or ``slurm``: SLURM, refused where it is absent."""

    step_s: float | None = None
    """Seconds per DP step on the cluster's device, to size the time limit when ``time_min``
    is None; None: measured here."""

    nodes: int = 1
    """Nodes each cell's job spans; with ``tasks_per_node``, one cell runs on
    ``nodes x tasks_per_node`` processes (`bench.train.ranks`)."""

    tasks_per_node: int = 1
    """Processes per node of each cell's job (one per GPU: ``gpus`` defaults to it)."""

    def submitit_parameters(self) -> dict[str, Any]:
        """The options given, under the names submitit's ``update_parameters`` takes."""
        given = {
            "slurm_partition": self.partition,
            "timeout_min": self.time_min,
            "gpus_per_node": self.gpus,
            "slurm_array_parallelism": self.parallel,
        }
        if self.nodes * self.tasks_per_node > 1:  # one cell over several processes
            given.update(nodes=self.nodes, tasks_per_node=self.tasks_per_node)
            given["gpus_per_node"] = self.gpus if self.gpus is not None else self.tasks_per_node
        return {k: v for k, v in given.items() if v is not None}

    def __post_init__(self) -> None:
        _at_least_one("--slurm-nodes", self.nodes)
        _at_least_one("--slurm-tasks-per-node", self.tasks_per_node)

    @property
    def world_size(self) -> int:
        """Processes each cell's job runs."""
        return self.nodes * self.tasks_per_node


@dataclass(frozen=True)
class RunOptions:
    """How a suite is swept; the suite itself says what is run.

    ``bench run`` sets each field from the flag of the same name (``--retry-failed``), but
    ``out_dir`` (``--out``), ``progress`` (``--no-progress``) and ``slurm`` (`SlurmOptions`).
    """

    out_dir: Path | None = None
    """Records, suite.json and the leaderboard go here; None: ``runs/<suite name>``
    (git-ignored; the published ``reports/<suite>`` only with an explicit ``--out``)."""

    force: bool = False
    """Re-run every cell, whatever its record, from step 0: the checkpoints of the cells about
    to run are discarded first."""

    retry_failed: bool = False
    """Also re-run the cells whose newest record is ``failed``."""

    allow_mixed_env: bool = False
    """Append even when existing records were made under another software stack (the report
    then lists the stacks); refused otherwise."""

    device: str | None = None
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``...; None: auto."""

    executor: str = "local"
    """The executor's name in `bench.sweep.run.EXECUTORS`: ``local`` or ``slurm``."""

    workers: int | None = None
    """Local worker processes; None: one per visible GPU (one on the CPU)."""

    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """How the ``slurm`` executor submits (unused by ``local``)."""

    progress: bool = True
    """Show a progress bar with the current cell and an ETA."""

    report: bool = True
    """Write the leaderboard when the sweep ends."""

    keep_checkpoints: bool = False
    """Keep each run's last checkpoint after its record is written."""

    nproc: int = 1
    """Local processes each cell runs on (``--nproc``): one per GPU on CUDA, gloo processes
    sharing the cores on the CPU. The result is the one process's (`bench.train.ranks`) at
    the same intra-op thread count per process; on the CPU each rank gets the cores divided
    by W, which rounds like one process at that many threads, not like one at all of them."""

    collective_timeout_s: float = 600.0
    """Seconds a multi-process cell's collective waits for the other ranks before the cell is
    recorded ``interrupted``."""

    def __post_init__(self) -> None:
        _at_least_one("--nproc", self.nproc)

    @property
    def cell_processes(self) -> int:
        """Processes each cell runs on: the SLURM job's (`SlurmOptions.world_size`) under
        the ``slurm`` executor; under a launcher (``torchrun``: ``WORLD_SIZE`` set, as
        `bench.sweep.processes.launched_ranks` reads it) its world; else ``nproc``."""
        if self.executor == "slurm":
            return self.slurm.world_size
        launched = os.environ.get("WORLD_SIZE", "")
        if self.nproc == 1 and launched.isdigit() and int(launched) > 1:
            return int(launched)
        return self.nproc
