"""The header's lines on the runs' randomness: what a seeded run's (epsilon, delta) covers, and
which records predate per-cell secret streams."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results.record import Record


def _count(part: int, whole: int) -> str:
    return "every run" if part == whole else f"{part} of {whole} runs"


def randomness_lines(records: Sequence[Record]) -> list[str]:
    """Header lines, from the ok records' ``secure_noise`` and ``stream_scheme``.

    A run with ``secure_noise`` false (or absent: before the field, every run was seeded) drew
    its noise and Poisson sampling from its published seed, so it reproduces and is a
    measurement of a DP procedure, not a private release. A record without ``stream_scheme``
    predates per-cell secret streams (`bench.seeds.STREAM_SCHEME`): its noise and sampling
    were seeded by (seed, purpose) alone, the same for every cell of its seed.
    """
    ok = [r for r in records if r.get("status") == "ok"]
    seeded = [r for r in ok if r.get("secure_noise") is not True]
    secure = len(ok) - len(seeded)
    shared = [r for r in seeded if not r.get("stream_scheme")]
    lines = []
    if seeded:
        lines.append(
            f"- **Seeded runs:** {_count(len(seeded), len(ok))} drew noise and sampling from "
            "the published seeds (`secure_noise: false`). The training procedure is "
            "(ε, δ)-DP when its randomness is secret; these runs use published seeds so anyone "
            "can reproduce them, and are measurements of the procedure, not private releases."
        )
    if secure:
        lines.append(
            f"- **Secure noise:** {_count(secure, len(ok))} drew noise and sampling from the "
            "operating system (`privacy.secure_noise: true`): their seeds reveal neither, and "
            "they do not reproduce."
        )
    if shared:
        lines.append(
            f"- **Shared streams:** the records of {_count(len(shared), len(ok))} predate "
            "per-cell secret streams (they have no `stream_scheme`): their noise and Poisson "
            "sampling were seeded per (seed, purpose), shared by every cell of a seed (other "
            "norm, ε, learning rate, steps or tuning stage). Each run's ε holds for it alone; no "
            "composition bound covers two such runs released together, and re-running one "
            "today draws other noise and batches."
        )
    return lines
