"""GPU-report part ``table``: DP/non-DP step time and memory for every (backbone, norm, kind)."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

import norms
from bench.config import DEFAULT_NORM
from bench.perf.kinds import KINDS
from bench.perf.parts.base import PartRun, time_step

TITLE = "DP/non-DP step time and memory"


def measure(run: PartRun) -> None:
    """Every kind for every (backbone, norm): the reference pair first, so a time box cuts the
    least important measurements."""
    s = run.sizes
    names = [DEFAULT_NORM, *[n for n in norms.list_norms() if n != DEFAULT_NORM]]
    rows: list[dict[str, Any]] = []
    run.data.update(
        batch=s.table_batch, width=s.width, image=s.image, warmup=s.warmup, reps=s.reps, rows=rows
    )
    todo = [(b, n, k) for b in s.backbones for n in names for k in KINDS]
    for i, (b, n, k) in enumerate(todo):
        if run.expired():
            run.notes.append(f"time box reached: {i} of {len(todo)} measurements made")
            break
        row: dict[str, Any] = {"backbone": b, "norm": n, "kind": k}
        cell = time_step(run, b, n, k)
        if "mem_measure" in cell:
            run.data["mem_measure"] = cell.pop("mem_measure")
        row.update(cell)
        rows.append(row)
        run.measured()


def _cell(rows: dict[str, dict[str, Any]], kind: str) -> dict[str, Any] | None:
    r = rows.get(kind)
    return r if r and "seconds" in r else None


def _headers() -> list[str]:
    headers = ["backbone", "norm", "non-DP ms", "non-DP MiB"]
    for k in KINDS[1:]:
        headers += [f"{k} ms", f"{k} time ratio", f"{k} mem ratio"]
    return [*headers, "Opacus ghost / book-keeping"]


def _line(backbone: str, norm: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    """One table row: the non-private step, each DP kind against it, then ghost / book-keeping."""
    base = _cell(rows, "nonprivate")
    line = [backbone, norm]
    if base:
        line += [f"{base['seconds'] * 1000:.1f}", f"{base['mem_bytes'] / 2**20:.0f}"]
    else:
        line += ["-", "-"]
    for k in KINDS[1:]:
        r = _cell(rows, k)
        if r is None:
            line += ["-", "-", "-"]
            continue
        line.append(f"{r['seconds'] * 1000:.1f}")
        line += (
            [
                f"{r['seconds'] / base['seconds']:.2f}",
                f"{r['mem_bytes'] / max(base['mem_bytes'], 1):.2f}",
            ]
            if base
            else ["-", "-"]
        )
    bk, ghost = _cell(rows, "dp"), _cell(rows, "dp-opacus-ghost")
    line.append(f"{ghost['seconds'] / bk['seconds']:.2f}" if bk and ghost else "-")
    return line


def render(data: dict[str, Any]) -> list[str]:
    """The sizes and how time and memory were taken, the table, then what was not measured."""
    pairs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in data.get("rows", []):
        pairs.setdefault((r["backbone"], r["norm"]), {})[r["kind"]] = r
    table = [_line(b, n, rows) for (b, n), rows in pairs.items()]
    errors = [
        f"{b} {n} {k}: {r['error']}"
        for (b, n), rows in pairs.items()
        for k, r in rows.items()
        if "error" in r
    ]
    out = [
        f"Physical batch {data.get('batch')} (one physical batch a step), width "
        f"{data.get('width')}, {data.get('image')}x{data.get('image')} images, one view, fp32, "
        f"noise multiplier 1, clip 1; time: median of {data.get('reps')} steps after "
        f"{data.get('warmup')} warm-up, each between device synchronisations; memory: "
        f"{data.get('mem_measure', 'n/a')}. Ratios are to the non-private step. "
        "All measurements in one process, one after another.",
        "",
        tabulate(table, _headers(), tablefmt="github") if table else "(nothing measured)",
    ]
    if errors:
        out += ["", "Not measured:", "", *[f"- {e}" for e in errors]]
    return out
