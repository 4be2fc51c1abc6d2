"""GPU-report part ``bf16``: bf16 autocast against fp32, non-private and book-keeping steps."""

from __future__ import annotations

from typing import Any

from bench.config import DEFAULT_NORM
from bench.perf.parts.base import PartRun, time_step

TITLE = "bf16 against fp32"


def measure(run: PartRun) -> None:
    """Each backbone with the default norm, each of its two steps in fp32 then in bf16."""
    s = run.sizes
    rows: list[dict[str, Any]] = []
    run.data.update(batch=s.table_batch, width=s.width, image=s.image, reps=s.reps, rows=rows)
    for b in s.backbones:
        for kind in ("nonprivate", "dp"):
            row: dict[str, Any] = {"backbone": b, "norm": DEFAULT_NORM, "kind": kind}
            rows.append(row)
            for precision in ("fp32", "bf16"):
                if run.expired():
                    run.notes.append("time box reached")
                    return
                cell = time_step(run, b, DEFAULT_NORM, kind, precision)
                cell.pop("mem_measure", None)
                row[precision] = cell
                run.measured()


def render(data: dict[str, Any]) -> list[str]:
    """One row per (backbone, step): both precisions' time and memory, and the speed-up."""
    out = [
        f"Physical batch {data.get('batch')}, width {data.get('width')}, "
        f"{data.get('image')}x{data.get('image')}; bf16 autocast for forward and backward, "
        "per-example norms and clipped sums in fp32 (`training.precision: bf16`).",
        "",
        "| backbone | norm | step | fp32 ms | bf16 ms | bf16 speed-up | fp32 MiB | bf16 MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data.get("rows", []):
        a, b = r.get("fp32", {}), r.get("bf16", {})
        if "seconds" not in a or "seconds" not in b:
            err = a.get("error") or b.get("error") or "not measured"
            out.append(f"| {r['backbone']} | {r['norm']} | {r['kind']} | {err} | | | | |")
            continue
        out.append(
            f"| {r['backbone']} | {r['norm']} | {r['kind']} | {a['seconds'] * 1000:.1f} | "
            f"{b['seconds'] * 1000:.1f} | {a['seconds'] / b['seconds']:.2f} | "
            f"{a['mem_bytes'] / 2**20:.0f} | {b['mem_bytes'] / 2**20:.0f} |"
        )
    return out
