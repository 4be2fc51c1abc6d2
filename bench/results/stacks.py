"""Software stacks of records: which library versions made each run, and pip constraints for them.

A number is reproducible only in the stack that made it (two torch releases gave 53.87% and
52.57% on one cell with one seed), so a sweep never silently mixes stacks, every leaderboard
names its stack(s), and each published report ships a constraints file for pip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from bench.provenance import RESULT_PACKAGES
from bench.results.record import Record

#: Provenance keys that define a stack: a difference in any of them may change a result.
STACK_KEYS = ("torch", "opacus", "timm", "cuda")
#: Distributions pinned in a constraints file, in this order (provenance key -> pip name).
PINNED = {package.lower(): package for package in RESULT_PACKAGES}

Stack = tuple[tuple[str, str], ...]


def stack_of(provenance: Mapping[str, object] | None) -> Stack:
    """The stack a record's provenance names: ``(key, version)`` for each `STACK_KEYS` entry
    it records (older records lack ``cuda``)."""
    provenance = provenance or {}
    return tuple((k, str(provenance[k])) for k in STACK_KEYS if provenance.get(k) is not None)


def stack_text(stack: Stack) -> str:
    return ", ".join(f"{k} {v}" for k, v in stack) or "not recorded"


def differences(a: Stack, b: Stack) -> list[str]:
    """``key a -> b`` for every stack key both record and on which they differ."""
    da, db = dict(a), dict(b)
    return [f"{k} {da[k]} -> {db[k]}" for k in STACK_KEYS if k in da and k in db and da[k] != db[k]]


def stacks(records: Iterable[Record]) -> dict[Stack, list[Record]]:
    """Records grouped by the stack that made them (records without provenance left out)."""
    out: dict[Stack, list[Record]] = {}
    for record in records:
        if isinstance(record.get("provenance"), Mapping):
            out.setdefault(stack_of(record["provenance"]), []).append(record)
    return out


def public_version(version: str) -> str:
    """A version pip can resolve: PyPI's CUDA builds of torch report ``2.14.1+cu130`` at run
    time but are published as ``2.14.1``."""
    return version.split("+", 1)[0]


def constraints_text(versions: Mapping[str, object], header: Sequence[str] = ()) -> str:
    """A pip constraints file pinning the `PINNED` distributions ``versions`` names."""
    lines = [f"# {h}" for h in header]
    lines += [
        f"{name}=={public_version(str(versions[key]))}"
        for key, name in PINNED.items()
        if versions.get(key)
    ]
    return "\n".join(lines) + "\n"
