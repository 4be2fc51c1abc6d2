"""Named random streams: every source of a run's randomness draws from its own (seed, purpose).

Seeding generators with ``seed``, ``seed + 1``, ... makes run s's noise stream run s+4's
sampling stream, so two seeds of one sweep are not independent. Here each stream's seed is a
hash of (seed, purpose): distinct purposes and distinct seeds give unrelated streams.
"""

from __future__ import annotations

import hashlib
import os

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
    "prune",  # pre-pruning's random mask (bench.sparsity)
    "grad_drop",  # gradient dropping's random channels at each step (bench.sparsity)
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


#: Streams that ``privacy.secure_noise`` takes off the seed: knowing them would undo the noise
#: (DP-SGD's, a norm's DP statistics') or reveal which examples a step or a calibration read,
#: which amplification by subsampling assumes secret. Initialisation, augmentation, dropout
#: and the non-private timing stay on the seed.
SECRET_STREAMS = ("sampling", "noise", "norm")


def secure_seed() -> int:
    """A 63-bit seed from the operating system's entropy (``os.urandom``), never from a run seed."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def run_stream(
    seed: int, purpose: str, device: torch.device | str = "cpu", *, secure: bool = False
) -> torch.Generator:
    """The generator of a run's stream: `stream`, or, for a `SECRET_STREAMS` purpose (or one
    under it, ``norm.x``) when ``secure``, a generator seeded by `secure_seed`.

    A secure generator is torch's Mersenne Twister (or Philox on CUDA) with an unpredictable
    seed: the seed and the records reveal nothing of it, but it is not a cryptographic
    generator (torchcsprng is not a dependency), so an adversary who saw enough of its raw
    outputs could in principle recover its state; the run publishes none of them.
    """
    if secure and purpose.split(".")[0] in SECRET_STREAMS:
        return torch.Generator(device=device).manual_seed(secure_seed())
    return stream(seed, purpose, device)
