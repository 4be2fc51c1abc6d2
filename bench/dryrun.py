"""``run --dry-run``: the resolved grid and each cell's privacy calibration, without training."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from bench.config import Cell, Suite
from bench.results.records import finished_keys


def _privacy_rows(cell: Cell, n_private: int, model_cache: dict) -> list[str]:
    import torch

    from bench.engine import build_model, plan_privacy

    key = (cell.backbone, cell.norm)
    if key not in model_cache:  # the charge depends on the architecture only, never on data
        model_cache[key] = build_model(cell, 10, torch.device("cpu"))
    model = model_cache[key]
    plans = {acc: plan_privacy(cell, n_private, model, accountant=acc) for acc in ("prv", "rdp")}
    chosen = plans[cell.privacy.accountant].calibration
    charges = (
        "; ".join(f"{c['steps']}x sigma={c['noise_multiplier']}" for c in plans["prv"].charges)
        or "-"
    )
    return [
        f"{plans['prv'].sample_rate:.5f}",
        str(plans["prv"].steps),
        f"{plans['prv'].calibration.noise_multiplier:.4f}",
        f"{plans['rdp'].calibration.noise_multiplier:.4f}",
        f"{chosen.epsilon_by_accountant['prv']:.3f} / {chosen.epsilon_by_accountant['rdp']:.3f}",
        charges,
    ]


def render_dry_run(suite: Suite, records_path: Path) -> str:
    """A table with one row per cell: what would run and at which noise multiplier."""
    from bench.data import count_train_examples

    done = finished_keys(records_path)
    rows, sizes, models = [], {}, {}
    for cell in suite.cells():
        if cell.data not in sizes:
            sizes[cell.data] = count_train_examples(cell.data) - cell.data.public_split
        extras = ",".join(f"{k}={v}" for k, v in sorted(cell.overrides.items())) or "-"
        rows.append(
            [
                cell.run_key,
                cell.backbone,
                cell.norm,
                cell.seed,
                extras,
                sizes[cell.data],
                *_privacy_rows(cell, sizes[cell.data], models),
                "yes" if cell.run_key in done else "no",
            ]
        )
    head = (
        f"suite {suite.name}: {len(rows)} cells; target (epsilon={suite.privacy.epsilon}, "
        f"delta={suite.privacy.delta}); calibrated with each accountant; the run uses "
        f"{suite.privacy.accountant}; records: {records_path}"
    )
    table = tabulate(
        rows,
        headers=[
            "run key",
            "backbone",
            "norm",
            "seed",
            "grid extras",
            "N",
            "q",
            "steps",
            "sigma (prv)",
            "sigma (rdp)",
            "eps prv / rdp at run sigma",
            "other charges",
            "recorded",
        ],
    )
    return f"{head}\n{table}\n(dry run: nothing trained, nothing written)"
