"""The processes one cell runs on: which share of the logical batch is this rank's, and the
sums across ranks that make W processes compute what one does.

Why not Opacus' ``DistributedDPOptimizer`` / ``DPDDP``: they add noise on rank 0 only, average
the ranks' gradients and scale by a per-rank expected batch, and each rank draws its own
Poisson sample; this engine's contract is that a cell's result does not depend on W (one
Poisson sample from the cell's sampling stream, one noise draw from its noise stream). So the
ranks draw the same sample and the same noise from identically seeded streams, each clips its
contiguous share, the clipped sums are all-reduced (`sum_`) before the noise, and every rank
then applies the identical update: no broadcast, no averaging, the arithmetic of one process
up to the order of a float sum.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ``world_size`` processes of one cell (rank 0 writes)."""

    rank: int = 0
    world_size: int = 1
    reduce_s: list[float] = field(default_factory=lambda: [0.0], compare=False)
    """Seconds this rank spent in `sum_` (waiting for the others included), in a one-item
    list so that the frozen record of the ranks can count; the loop zeroes it after warm-up."""

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """The process that writes checkpoints and the record, and shows progress."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` examples (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (one all-reduce of their concatenation)."""
        if not self.distributed or not tensors:
            return
        started = time.perf_counter()
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        self.reduce_s[0] += time.perf_counter() - started
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def mean_loss(self, loss: float, n: int, device: torch.device) -> float:
        """The logical batch's mean loss from each rank's mean over its ``n`` examples (NaN
        when the batch is empty, as on one process)."""
        if not self.distributed:
            return loss
        part = torch.tensor([loss * n if n else 0.0, float(n)], dtype=torch.float64, device=device)
        dist.all_reduce(part)
        return float(part[0] / part[1]) if part[1] else math.nan

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer); ``device``
        is where the backend reduces (NCCL: the rank's GPU)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


#: One process: the default everywhere.
SINGLE = Ranks()


def current() -> Ranks:
    """The ranks of the initialised default process group, or `SINGLE`."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE
