"""Saved weights of finished runs: the file's layout, written atomically and read back checked.

A run with ``training.save_model`` (``python -m bench run --save-models``) writes
``<records folder>/models/<run_key>.pt``: a dictionary of plain values and tensors, read with
``torch.load(weights_only=True)``::

    {"format": 1, "run_key": "...", "eval_weights": "ema" | "final",
     "weights": {"final": <state_dict>, "ema": <state_dict> | None}}

``weights["final"]`` are the model's weights after the last step, ``weights["ema"]`` their EMA
(None without ``training.ema``), and ``eval_weights`` names the ones the record's accuracy was
measured with, as the record's own ``eval_weights`` field does. `bench.rescore` scores them
again against the record (``python -m bench eval``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench import checkpoint
from bench.errors import SavedModelError

#: Bump when the file's layout changes.
FORMAT = 1
FOLDER = "models"


def model_path(model_dir: Path, run_key: str) -> Path:
    return Path(model_dir) / f"{run_key}.pt"


def save(
    model_dir: Path, run_key: str, final: nn.Module, ema: nn.Module | None, eval_weights: str
) -> Path:
    """Write a finished run's final and EMA weights atomically; returns the file's path.

    Args:
        eval_weights: ``ema`` or ``final``: the weights the run's accuracy was measured with.
    """
    path = model_path(model_dir, run_key)
    payload = {
        "format": FORMAT,
        "run_key": run_key,
        "eval_weights": eval_weights,
        "weights": {
            "final": final.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
        },
    }
    checkpoint.save_atomic(path, payload)
    return path


def load(path: Path, run_key: str) -> dict[str, Any]:
    """The saved-model file at ``path``, checked to be ``run_key``'s.

    Raises:
        SavedModelError: Missing, unreadable, of another layout or another run.
    """
    if not path.exists():
        raise SavedModelError(f"run {run_key}: model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or holding objects weights_only refuses
        raise SavedModelError(
            f"run {run_key}: model file {path} is unreadable ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SavedModelError(f"run {run_key}: model file {path} has another format")
    if payload.get("run_key") != run_key:
        raise SavedModelError(
            f"run {run_key}: model file {path} holds run {payload.get('run_key')}'s weights"
        )
    return payload
