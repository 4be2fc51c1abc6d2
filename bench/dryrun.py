"""``run --dry-run``: the resolved grid and each cell's privacy calibration, without training."""

from __future__ import annotations

from pathlib import Path

from tabulate import tabulate

from bench.config import Suite
from bench.plan import CellPlan, plan_cells
from bench.results.records import finished_keys
from bench.sweep.cost import SweepCost
from bench.sweep.protocol import planned_cells


def _eps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _privacy_cells(plan: CellPlan) -> list[str]:
    prv, rdp = plan.calibrations["prv"], plan.calibrations["rdp"]
    chosen = plan.calibration
    entries = (c.history_entry() for c in plan.charges)  # (sigma, q, steps), any kind of charge
    charges = "; ".join(f"{steps}x sigma={sigma}" for sigma, _, steps in entries) or "-"
    return [
        f"{plan.sample_rate:.5f}",
        str(plan.steps),
        f"{prv.noise_multiplier:.4f}",
        f"{rdp.noise_multiplier:.4f}",
        " / ".join(_eps(chosen.epsilon_by_accountant.get(a)) for a in ("prv", "rdp")),
        charges,
    ]


def _listed(suite: Suite, rows: int) -> str:
    """What the table lists, against what the cost counts."""
    if suite.tune is None:
        return f"{rows} cells in the grid"
    return (
        f"the table lists all {rows} cells the protocol can make (the coarse tuning cells, "
        "every refinement a coarse optimum could add, and each candidate's final cells); the "
        "cost above counts what runs: one refinement per grid point and one final cell per "
        "grid cell"
    )


def render_dry_run(suite: Suite, records_path: Path, cost: SweepCost) -> str:
    """The sweep's cost (`bench.sweep.cost`), then a table with one row per cell it may run:
    what would run and at which noise multiplier."""
    done = finished_keys(records_path)
    rows = []
    for plan in plan_cells(planned_cells(suite), accountants=("prv", "rdp")):
        cell = plan.cell
        extras = {**cell.overrides, **cell.tuned}
        extras = ",".join(f"{k}={v}" for k, v in sorted(extras.items())) or "-"
        if not plan.dp_valid:
            extras += f" (TAN simulation at b={plan.batch_size})"
        rows.append(
            [
                cell.run_key,
                cell.backbone,
                cell.norm,
                cell.seed,
                cell.stage,
                extras,
                plan.n_private,
                plan.num_classes,
                *_privacy_cells(plan),
                "yes" if cell.run_key in done else "no",
            ]
        )
    listed = _listed(suite, len(rows))
    head = (
        "\n".join(cost.lines())
        + "\n"
        + (
            f"suite {suite.name}: {listed}; target (epsilon={suite.privacy.epsilon}, "
            f"delta={suite.privacy.delta}); calibrated with each accountant; the run uses "
            f"{suite.privacy.accountant}; records: {records_path}"
        )
    )
    table = tabulate(
        rows,
        headers=[
            "run key",
            "backbone",
            "norm",
            "seed",
            "stage",
            "grid extras / tuned",
            "N",
            "classes",
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
