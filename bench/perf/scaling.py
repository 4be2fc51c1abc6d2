"""The scaling table: one cell's DP training on 1 and W processes (``python -m bench.perf
scaling``), with the cross-rank sum's share of a step.

Each row trains the suite's first cell (after ``--set`` overrides) through the engine
(`bench.train.cell.train_cell`, or `bench.sweep.processes.train_cell_on` for W > 1), so the
figures are those a record would hold: DP images/s over the timed steps (warm-up excluded;
sampling, augmentation, forward, backward, clipping, the sum across ranks, noise, update),
summed over the ranks, and each rank's seconds inside the sum across ranks
(`bench.train.ranks.Ranks.sum_in_order`, waiting for the slowest rank included) over its timed
steps (the record's ``allreduce_share_per_rank``). The non-private reference is off: it is not
what scales. A rank's share is whole physical batches, so a logical batch of fewer physical
batches than processes leaves some idle: give ``training.max_physical_batch`` at most
``batch_size / W``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import torch

from bench import atomic
from bench.config import Cell
from bench.errors import UsageError
from bench.measure import resolve_device
from bench.provenance import cpu_model, device_name
from bench.results.leaderboard.markdown import table
from bench.suite import load_suite
from bench.sweep.processes import check_nproc, train_cell_on
from bench.train.cell import train_cell


def scaling_rows(cell: Cell, device: torch.device, nprocs: list[int]) -> list[dict[str, Any]]:
    """One record per process count in ``nprocs`` (1 trains in this process)."""
    cell = dataclasses.replace(
        cell, training=dataclasses.replace(cell.training, measure_nonprivate=False)
    )
    rows = []
    for w in nprocs:
        check_nproc(w, device)
        rows.append(train_cell(cell, device) if w == 1 else train_cell_on(w, cell, device))
    return rows


def scaling_markdown(cell: Cell, device: torch.device, rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table under a line saying what was run, and where."""
    base = rows[0]["throughput_img_s"]
    body = []
    for r in rows:
        w, total = r["world_size"], r["throughput_img_s"]
        per_rank = r.get("throughput_per_rank_img_s") or [total]
        shares = [s for s in r.get("allreduce_share_per_rank") or [] if s is not None]
        body.append(
            [
                str(w),
                f"{total:.1f}",
                " / ".join(f"{t:.1f}" for t in per_rank),
                f"{total / base:.2f}x" if base else "—",
                f"{max(shares):.1%}" if shares else "—",
                f"{r['test_acc']:.4f}",
            ]
        )
    where = device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})"
    head = (
        f"`{cell.backbone}` + `{cell.norm}`, batch {cell.training.batch_size}, "
        f"physical batches of {cell.training.max_physical_batch}, "
        f"{cell.training.augmult} view(s), {rows[0]['steps']} steps, on {where}"
    )
    headers = [
        "processes",
        "DP img/s (total)",
        "per rank",
        "speed-up",
        "cross-rank sum share",
        "acc",
    ]
    return head + "\n\n" + table(body, headers)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``scaling``'s arguments."""
    parser.add_argument("suite", help="a suite file; its first cell (after --set) is timed")
    parser.add_argument("--nproc", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--set", action="append", default=[], help="suite override KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="also write the table to this file")


def process_counts(text: str) -> list[int]:
    """``--nproc``'s comma-separated process counts (``1,2``), each at least 1.

    Raises:
        UsageError: Naming the value given and what is allowed.
    """
    try:
        counts = [int(w) for w in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(
            f"--nproc: {text!r} is not a list of process counts: give whole numbers of at "
            "least 1, comma-separated (e.g. 1,2,4)"
        )
    return counts


def run_from_args(args: argparse.Namespace) -> int:
    """Print the scaling table for the parsed arguments."""
    nprocs = process_counts(args.nproc)
    cell = load_suite(args.suite, args.set).cells()[0]
    device = resolve_device(args.device)
    text = scaling_markdown(cell, device, scaling_rows(cell, device, nprocs))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, text + "\n")
    print(text)
    return 0
