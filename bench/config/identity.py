"""The identity of a run: its run key, its checkpoint hash, and the canonical-JSON hash of both."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from bench.config.public import data_to_dict
from bench.config.sections import DataConfig, PrivacyConfig, TrainingConfig

# Fields that say where files live or how a dataset is labelled, not what is computed: moving the
# cache or relabelling the dataset must not invalidate finished runs.
_NOT_IN_RUN_KEY = ("cache_dir", "download", "dataset")
#: Per section, fields that never change what a run computes (diagnostics, checkpoints, saving).
_DIAGNOSTIC_FIELDS = {"training": ("log_private_loss", "checkpoint_every", "save_model")}
#: Per section, fields added after records were published, with their defaults: they enter the
#: run key only when set to something else, so every published run key stays valid.
_IN_RUN_KEY_WHEN_SET = {
    # A private copy read without its checksum may differ from the publisher's: its own key.
    "data": {"val_split": 0, "verify_checksum": True},
    "privacy": {"secure_noise": False, "simulate_batch_size": None},
    "training": {"pre_prune": None, "grad_drop": None, "divergence_check": "parameters"},
}


def sha256_text(text: str) -> str:
    """The SHA-256 of ``text``'s UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_json(value: Any) -> str:
    """The SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces), in hex.

    Values JSON cannot represent hash as their ``str``.
    """
    return sha256_text(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


def run_key(
    backbone: str,
    norm: str,
    seed: int,
    data_config: DataConfig,
    privacy: PrivacyConfig,
    training: TrainingConfig,
    stage: str,
    *,
    score_noise: float | None = None,
) -> str:
    """First 16 hex digits of the SHA-256 of everything that changes a cell's result.

    The suite's name, description and report settings are left out, so renaming a suite or
    rewording it keeps finished runs. ``score_noise`` (a tuning cell's noisy validation score)
    enters only when set: final cells keep their keys, and a tuning run scored with noise
    never takes the key of one that published its exact score.
    """
    data = data_to_dict(data_config)
    for name in _NOT_IN_RUN_KEY:
        data.pop(name)
    for name, default in _IN_RUN_KEY_WHEN_SET["data"].items():
        if data[name] == default:
            data.pop(name)
    if data_config.source == "cifar10":
        data.pop("root")  # CIFAR-10 is the same wherever it is stored; a folder is not
    payload = {
        "backbone": backbone,
        "norm": norm,
        "seed": seed,
        "data": data,
        "privacy": _key_section("privacy", privacy),
        "training": _key_section("training", training),
    }
    if stage != "final":  # a final run is the run a suite without tuning makes
        payload["stage"] = stage
    if score_noise is not None:
        payload["score_noise"] = score_noise
    return sha256_json(payload)[:16]


def _key_section(section: str, config: Any) -> dict[str, Any]:
    """A config section as the run key hashes it: without `_DIAGNOSTIC_FIELDS`, and without
    `_IN_RUN_KEY_WHEN_SET` fields at their defaults."""
    out = dataclasses.asdict(config)
    for name in _DIAGNOSTIC_FIELDS.get(section, ()):
        out.pop(name)
    for name, default in _IN_RUN_KEY_WHEN_SET.get(section, {}).items():
        if out[name] == default:
            out.pop(name)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a resolved cell config (the record's ``config``), as canonical JSON."""
    return sha256_json(config)


def checkpoint_hash(cell_config: Mapping[str, Any]) -> str:
    """`config_hash` of a cell's resolved config (`bench.config.cell_to_dict`) less the fields
    that never change the result (``training.checkpoint_every``, ``save_model``,
    ``log_private_loss``), so that a run resumed with, say, another checkpoint interval still
    uses its checkpoint."""
    config = copy.deepcopy(dict(cell_config))
    for section, names in _DIAGNOSTIC_FIELDS.items():
        for name in names:
            config[section].pop(name, None)
            config["overrides"].pop(f"{section}.{name}", None)
    return config_hash(config)
