"""The processes one cell runs on: which share of the logical batch is this rank's, and the
sums across ranks that make W processes compute what one does, bit for bit.

Why not Opacus' ``DistributedDPOptimizer`` / ``DPDDP``: they add noise on rank 0 only, average
the ranks' gradients and scale by a per-rank expected batch, and each rank draws its own
Poisson sample; this engine's contract is that a cell's result does not depend on W (one
Poisson sample from the cell's sampling stream, one noise draw from its noise stream). So the
ranks draw the same sample and the same noise from identically seeded streams, each clips its
share, the clipped sums are added across ranks (`sum_in_order`) before the noise, and every
rank then applies the identical update: no averaging, the arithmetic of one process.

Why not an all-reduce of the clipped sums: one process adds its physical batches' clipped
sums left to right, ``((c1 + c2) + c3) + c4``, and an all-reduce would add ``(c1 + c2) + (c3
+ c4)`` (or, for W > 2, in the ring's order), which rounds differently; DP-SGD's noise does
not hide a rounding difference, training amplifies it (on the smoke suite, up to 14 points of
accuracy after 30 steps, as much as changing the number of threads). So a share is whole
physical batches (`shard`), each rank keeps its physical batches' sums apart, and the sums are
chained through the ranks in order: rank r receives the running sum of the physical batches
before its own, adds its own one by one, and passes it on; the last rank broadcasts the total.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from bkclip.steps import mean_of_chunks


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ``world_size`` processes of one cell (rank 0 writes)."""

    rank: int = 0
    world_size: int = 1
    reduce_s: list[float] = field(default_factory=lambda: [0.0], compare=False)
    """Seconds this rank spent in `sum_in_order` (waiting for the others included), in a one-item
    list so that the frozen record of the ranks can count; the loop zeroes it after warm-up."""

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def writer(self) -> bool:
        """The process that writes checkpoints and the record, and shows progress."""
        return self.rank == 0

    def shard(self, n: int, block: int = 1) -> slice:
        """This rank's contiguous share of ``n`` examples, in whole blocks of ``block`` (the
        last block of the batch may be short): ranks get the same number of blocks, up to one
        more for the last ranks, which hold the short block."""
        blocks = -(-n // block)
        base, extra = divmod(blocks, self.world_size)
        first = self.world_size - extra  # the ranks from here on take one block more
        start = self.rank * base + max(0, self.rank - first)
        stop = start + base + (self.rank >= first)
        return slice(min(n, start * block), min(n, stop * block))

    def sum_in_order(
        self, parts: list[list[torch.Tensor | None]], like: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """The sum, per tensor of ``like``, of every rank's ``parts`` added left to right in
        rank order then part order: bit for bit what one process gets by accumulating the
        same parts in the same order (``s = c1; s += c2; ...``). A part is one physical
        batch's tensors, one per tensor of ``like`` (None: zeros); no part on any rank gives
        zeros. Every rank gets the total. Cost: W - 1 sends in a chain, then one broadcast,
        each the size of ``like``.
        """
        started = time.perf_counter()
        sizes = [t.numel() for t in like]
        # [has a value, the running sum], the sum as one view per tensor of ``like``
        carry = torch.zeros(sum(sizes) + 1, dtype=like[0].dtype, device=like[0].device)
        sums = [v.view_as(t) for v, t in zip(carry[1:].split(sizes), like, strict=True)]
        if self.distributed and self.rank > 0:
            dist.recv(carry, src=self.rank - 1)
        started_sum = self.rank > 0 and bool(carry[0])
        for part in parts:  # elementwise: the same bits as adding each tensor on its own
            for total, value in zip(sums, part, strict=True):
                if value is None:
                    continue  # zeros: the sum so far (zeros where there is none yet)
                if started_sum:
                    total.add_(value)
                else:
                    total.copy_(value)
            started_sum = True
        carry[0] = float(started_sum)
        if self.distributed:
            if self.rank < self.world_size - 1:
                dist.send(carry, dst=self.rank + 1)
            dist.broadcast(carry, src=self.world_size - 1)
        self.reduce_s[0] += time.perf_counter() - started
        return sums

    def mean_loss(self, loss: float, chunks: list[tuple[float, int]], n: int) -> float:
        """The mean loss of the logical batch of ``n`` examples: this process's ``loss`` on one
        process; on several, every rank's ``chunks`` (its step's ``chunk_losses``: each
        physical batch's mean loss and examples) added in rank then batch order, so bit for
        bit what one process adds (`bkclip.steps.mean_of_chunks`; an all-reduce of the ranks'
        means would round otherwise). NaN when the batch is empty, as on one process."""
        if not self.distributed:
            return loss
        return mean_of_chunks([c for part in self.gather(chunks) for c in part], n)

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer); ``device``
        is where the backend reduces (NCCL: the rank's GPU)."""
        if not self.distributed:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_writer(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable), on every rank."""
        if not self.distributed:
            return value
        out = [value]
        dist.broadcast_object_list(out, src=0)
        return out[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def busiest_share(n: int, block: int, world: int) -> float:
    """The largest fraction of a logical batch of ``n`` examples that one of ``world`` ranks
    clips when shares are whole physical batches of ``block`` (`Ranks.shard`): what ideal
    scaling divides a step's time by (``1 / world`` only when the batch has a multiple of
    ``world`` physical batches)."""
    if n <= 0:
        return 1.0 / world
    sizes = [len(range(n)[Ranks(r, world).shard(n, block)]) for r in range(world)]
    return max(sizes) / n


#: One process: the default everywhere.
SINGLE = Ranks()


def current() -> Ranks:
    """The ranks of the initialised default process group, or `SINGLE`."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return SINGLE
