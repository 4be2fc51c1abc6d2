"""Named random streams: each source of a run's randomness draws from its own seeded stream.

Seeding generators with ``seed``, ``seed + 1``, ... makes run s's noise stream run s+4's
sampling stream, so two seeds of one sweep are not independent. Here each stream's seed is a
hash of (seed, purpose): distinct purposes and distinct seeds give unrelated streams. The
secret streams (`SECRET_STREAMS`: DP-SGD's noise, Poisson sampling, a norm's DP statistics) also
hash the cell's run key, so two cells of one seed (two epsilons, two learning rates, a tuning and
a final run) never share noise or batches: two releases with the same noise would give the
un-noised gradient back, and no composition bound covers them. The other streams
(initialisation, augmentation, dropout) stay on (seed, purpose): they are not secret, and the
report's comparisons paired by seed keep them as common random numbers.
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


def seed_dropout(seed: int, step: int, offset: int, chunk: int) -> None:
    """Seed the global generators for physical batch ``offset + chunk`` of DP step ``step``
    (the ``dropout`` stream, one sub-stream per physical batch of the logical batch).

    Dropout (``F.dropout``, e.g. KernelNorm's statistics dropout) takes no generator, so it
    draws from the global one; reseeding it per physical batch, by the batch's place in the
    logical batch, gives every example the same mask whichever process clips it: W processes
    reproduce one process (`bench.train.ranks`) and a resumed run draws what an uninterrupted
    one would, with no generator state to carry.
    """
    torch.manual_seed(stream_seed(seed, f"dropout/{step}/{offset + chunk}"))


#: Streams that are secret: knowing them would undo the noise (DP-SGD's, a norm's DP
#: statistics') or reveal which examples a step or a calibration read, which amplification by
#: subsampling assumes secret. Each cell draws its own (`cell_stream_seed`), and
#: ``privacy.secure_noise`` takes them off the seed. Initialisation, augmentation, dropout and
#: the non-private timing stay on (seed, purpose).
SECRET_STREAMS = ("sampling", "noise", "norm")


#: How a run's secret streams derive, as its record says (``stream_scheme``): from (seed,
#: purpose, run key). A record without the field predates it: its noise and sampling streams
#: were seeded by (seed, purpose) alone, shared by every cell of its seed.
STREAM_SCHEME = "secret streams per cell: sha256(seed, purpose, run key)"


def is_secret(purpose: str) -> bool:
    """Whether ``purpose`` is a `SECRET_STREAMS` purpose or one under it (``norm.x``)."""
    return purpose.split(".")[0] in SECRET_STREAMS


def cell_stream_seed(seed: int, purpose: str, cell_key: str) -> int:
    """A 63-bit seed for the secret stream of ``purpose`` of the cell ``cell_key`` (its run key)
    under run seed ``seed``."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{cell_key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def secure_seed() -> int:
    """A 63-bit seed from the operating system's entropy (``os.urandom``), never from a run seed."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def run_stream(
    seed: int,
    purpose: str,
    device: torch.device | str = "cpu",
    *,
    cell_key: str,
    secure: bool = False,
) -> torch.Generator:
    """The generator of a run's stream: `stream` for a purpose that is not secret; for a
    `SECRET_STREAMS` purpose (or one under it, ``norm.x``) a stream of (seed, purpose, the
    cell's run key ``cell_key``), or, when ``secure``, a generator seeded by `secure_seed`.

    A secure generator is torch's Mersenne Twister (or Philox on CUDA) with an unpredictable
    seed: the seed and the records reveal nothing of it, but it is not a cryptographic
    generator (torchcsprng is not a dependency), so an adversary who saw enough of its raw
    outputs could in principle recover its state; the run publishes none of them.
    """
    if not is_secret(purpose):
        return stream(seed, purpose, device)
    chosen = secure_seed() if secure else cell_stream_seed(seed, purpose, cell_key)
    return torch.Generator(device=device).manual_seed(chosen)
