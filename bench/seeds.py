"""Named random streams: every source of a run's randomness draws from its own (seed, purpose).

Seeding generators with ``seed``, ``seed + 1``, ... makes run s's noise stream run s+4's
sampling stream, so two seeds of one sweep are not independent. Here each stream's seed is a
hash of (seed, purpose): distinct purposes and distinct seeds give unrelated streams.
"""

from __future__ import annotations

import hashlib

import torch

#: The streams of one run, by purpose.
RUN_STREAMS = (
    "init",  # model initialisation (the global generator, before the model is built)
    "sampling",  # Poisson sampling of the logical batches
    "augmentation",  # crops and flips
    "noise",  # DP-SGD's Gaussian noise
    "dropout",  # the global generator during training (e.g. KernelNorm's statistics dropout)
    "nonprivate",  # the non-private throughput measurement's batches and augmentation
    "norm",  # a norm's preparation (prefix; the norm names its own streams under it)
)


def stream_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for the stream of ``purpose`` under run seed ``seed``."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` for the stream of ``purpose`` under run seed ``seed``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, purpose))


def seed_global(seed: int, purpose: str) -> None:
    """Seed torch's global generators (CPU and every CUDA device) with a named stream, for
    randomness that takes no generator argument (parameter init, ``F.dropout``)."""
    torch.manual_seed(stream_seed(seed, purpose))
