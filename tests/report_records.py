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


def dp_and_tan_run(run_dir: Path) -> Path:
    """A run folder with two norms x 2 seeds as DP runs and as a TAN simulation
    (``privacy.simulate_batch_size: 16``), ``other`` 5 pp above ``group_norm`` in both."""
    records = [
        make_record(
            "r9",
            norm,
            s,
            acc + 0.01 * s,
            num_classes=10,
            overrides={"privacy.simulate_batch_size": batch},
            dp_valid=batch is None,
            run_key=f"{norm}|{s}|{batch}",
        )
        for batch in (None, 16)
        for norm, acc in (("group_norm", 0.4), ("other", 0.45))
        for s in range(2)
    ]
    grid = {"backbone": ["r9"], "norm": ["group_norm", "other"], "seed": [0, 1]}
    grid["privacy.simulate_batch_size"] = [None, 16]
    return write_run(run_dir, records, {"grid": grid})
