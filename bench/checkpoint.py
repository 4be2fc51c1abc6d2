"""Mid-run checkpoints: written atomically, tied to the cell's config, loaded only when valid.

A checkpoint holds everything the rest of a run depends on, so that a run resumed from it ends
with the record an uninterrupted run would have had: the model, the optimiser (momentum), the
EMA weights, the learning-rate schedule, the step, every random stream's state, the
accountant's history and the loss and clipping accumulators. It lives at
``<out>/checkpoints/<run_key>/checkpoint.pt`` and is written to a temporary file, fsynced and
renamed over the previous one, so a kill at any point leaves the previous checkpoint or the new
one. It is read with ``torch.load(weights_only=True)``: nothing in it can run code.

A checkpoint that is truncated, unreadable, or made by a different configuration (its hash of
the resolved cell, `bench.config.identity.checkpoint_hash`, differs) is never used; the run starts
from step 0 and says why in one line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import atomic

#: Bump when the layout of the saved state changes, so old checkpoints are refused, not misread.
FORMAT = 1
FILE = "checkpoint.pt"


def checkpoint_path(directory: Path, run_key: str) -> Path:
    return Path(directory) / run_key / FILE


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
    save_atomic(path, {"format": FORMAT, "config_hash": cfg_hash, "state": dict(state)})


def save_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically (`bench.atomic.write_with`)."""
    atomic.write_with(path, lambda f: torch.save(obj, f))


@dataclass(frozen=True)
class Loaded:
    """What `load` found: the state to resume from, or None with the reason it was refused."""

    state: dict[str, Any] | None
    reason: str | None = None


def load(path: Path, cfg_hash: str, device: torch.device | str = "cpu") -> Loaded:
    """The checkpoint at ``path`` when it is whole, readable and made by this config."""
    if not path.exists():
        return Loaded(None, None)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects weights_only refuses
        return Loaded(
            None, f"checkpoint {path} is unreadable ({type(err).__name__}); starting over"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return Loaded(None, f"checkpoint {path} has another format; starting over")
    if payload.get("config_hash") != cfg_hash:
        return Loaded(None, f"checkpoint {path} was made by another configuration; starting over")
    return Loaded(payload["state"], None)


def remove(path: Path) -> None:
    """Delete a run's checkpoint, any temporary file a writer killed mid-write left beside it,
    and its folder when it is left empty."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
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
