"""Hand-made records and run directories for the leaderboard tests."""

from __future__ import annotations

import json
from pathlib import Path


def make_record(
    backbone: str, norm: str, seed: int, acc: float | None, status: str = "ok", **extra: object
) -> dict:
    """One record of a finished (or, by ``status``, unfinished) cell; ``extra`` adds fields."""
    ok = status == "ok"
    return {
        "run_key": f"{backbone}|{norm}|{seed}",
        "suite": "t",
        "backbone": backbone,
        "norm": norm,
        "seed": seed,
        "status": status,
        "error": None if ok else f"{status} for a reason",
        "test_acc": acc,
        "throughput_img_s": 100.0 if ok else None,
        "nonprivate_throughput_img_s": 400.0 if ok else None,
        "peak_mem_bytes": 2**30 if ok else None,
        "device": "cpu (2 threads)",
        "epsilon_target": 8.0,
        "epsilon_spent": 7.99 if ok else None,
        "delta": 1e-5,
        **extra,
    }


def write_run(run_dir: Path, records: list[dict], suite: dict | None = None) -> Path:
    """A run directory holding ``records`` (and ``suite.json`` when given), as a sweep leaves it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, sort_keys=True) for r in records]
    (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n")
    if suite is not None:
        (run_dir / "suite.json").write_text(json.dumps(suite))
    return run_dir
