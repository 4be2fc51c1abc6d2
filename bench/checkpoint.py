"""Mid-run checkpoints: written atomically, tied to the cell's config, loaded only when valid.

A checkpoint holds everything the rest of a run depends on, so that a run resumed from it ends
with the record an uninterrupted run would have had: the model, the optimiser (momentum), the
EMA weights, the learning-rate schedule, the step, every random stream's state, the
accountant's history and the loss and clipping accumulators. It lives at
``<out>/checkpoints/<run_key>/checkpoint.pt`` and is written to a temporary file, fsynced and
renamed over the previous one, so a kill at any point leaves the previous checkpoint or the new
one. It is read with ``torch.load(weights_only=True)``: nothing in it can run code.

A checkpoint carries the SHA-256 of its payload (the serialised state), checked on load: bytes
overwritten inside a tensor still unpickle, and a run resumed from them diverged and was
recorded as a permanent failure. The checkpoint before the newest is kept beside it
(``checkpoint.prev.pt``). A newest checkpoint that is truncated, unreadable, fails its checksum,
or was made by a different configuration (its hash of the resolved cell,
`bench.config.identity.checkpoint_hash`, differs) is never used: the run falls back to the
previous one when that one is whole, else starts from step 0, and says why in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import atomic

#: Bump when the layout of the saved state changes, so old checkpoints are refused, not misread.
FORMAT = 2
FILE = "checkpoint.pt"
#: The checkpoint before the newest, which a newest that fails its checks falls back to.
PREVIOUS = "checkpoint.prev.pt"


def checkpoint_path(directory: Path, run_key: str) -> Path:
    return Path(directory) / run_key / FILE


def previous_path(path: Path) -> Path:
    """Where the checkpoint before the one at ``path`` is kept."""
    return Path(path).with_name(PREVIOUS)


#: Written into the folder that holds the runs' checkpoint folders: a checkpoint holds the
#: un-noised loss and, under secure noise, the secret generators' states, so git must never
#: pick one up, wherever ``--out`` puts it (inside ``reports/`` too).
GITIGNORE = "# Written by bench: checkpoints hold run state that is not to be published.\n*\n"


def save(path: Path, state: Mapping[str, Any], cfg_hash: str) -> None:
    """Write ``state`` atomically (temporary file in the same folder, fsync, rename), in a
    checkpoints folder that git ignores."""
    ignore = Path(path).parent.parent / ".gitignore"
    if not ignore.exists():
        atomic.write_text(ignore, GITIGNORE)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    payload = buffer.getvalue()
    # The newest becomes the previous one first: a kill between the two renames leaves the
    # previous checkpoint alone, which `load` falls back to.
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, previous_path(path))
    save_atomic(
        path,
        {
            "format": FORMAT,
            "config_hash": cfg_hash,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
        },
    )


def save_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically (`bench.atomic.write_with`)."""
    atomic.write_with(path, lambda f: torch.save(obj, f))


@dataclass(frozen=True)
class Loaded:
    """What `load` found: the state to resume from, or None with the reason it was refused."""

    state: dict[str, Any] | None
    reason: str | None = None


def load(path: Path, cfg_hash: str, device: torch.device | str = "cpu") -> Loaded:
    """The checkpoint at ``path`` when it is whole, readable, passes its checksum and was made
    by this config; else the previous one (`previous_path`) when that one is; else none, with
    the reasons."""
    newest = _load_one(path, cfg_hash, device)
    if newest.state is not None:
        return newest
    previous = _load_one(previous_path(path), cfg_hash, device)
    refused = [(r.reason, f) for r, f in ((newest, path), (previous, previous_path(path)))]
    refused = [(reason, file) for reason, file in refused if reason is not None]
    # A refused file is deleted, so that the next `save` does not keep it as the previous one.
    for _, file in refused:
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    if previous.state is not None:  # the newest refused, or missing (a kill inside `save`)
        said = (
            f"{newest.reason}; discarded, resuming from the previous checkpoint"
            if refused
            else None
        )
        return Loaded(previous.state, said)
    if not refused:
        return Loaded(None, None)
    return Loaded(None, "; ".join(r for r, _ in refused) + "; discarded, starting over")


def _load_one(path: Path, cfg_hash: str, device: torch.device | str) -> Loaded:
    """One checkpoint file, or why it is refused (None, None when there is none)."""
    if not path.exists():
        return Loaded(None, None)
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects weights_only refuses
        return Loaded(None, f"checkpoint {path} is unreadable ({type(err).__name__})")
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        return Loaded(None, f"checkpoint {path} has another format")
    if outer.get("config_hash") != cfg_hash:
        return Loaded(None, f"checkpoint {path} was made by another configuration")
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8:
        return Loaded(None, f"checkpoint {path} has no payload")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        return Loaded(None, f"checkpoint {path} fails its checksum (corrupted)")
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as err:  # a payload that hashes right but was never a state
        return Loaded(None, f"checkpoint {path} is unreadable ({type(err).__name__})")
    return Loaded(state, None)


def remove(path: Path) -> None:
    """Delete a run's checkpoint, the previous one, any temporary file a writer killed
    mid-write left beside them, and their folder when it is left empty."""
    for file in (path, previous_path(path)):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    for torn in atomic.stray_temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            torn.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def generator_states(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """Each named generator's state, as CPU byte tensors (what ``weights_only`` loads)."""
    return {name: g.get_state() for name, g in generators.items()}


def restore_generators(
    generators: Mapping[str, torch.Generator], states: Mapping[str, torch.Tensor]
) -> None:
    for name, g in generators.items():
        g.set_state(states[name].cpu())


def global_rng_state() -> dict[str, Any]:
    """torch's global CPU and CUDA generator states (dropout and anything else unseeded)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
