"""GPU-report part ``max_batch``: the largest physical batch each kind fits, searched for."""

from __future__ import annotations

from typing import Any

import torch

from bench.config import DEFAULT_NORM
from bench.measure import synchronize, tensor_peak_bytes
from bench.perf.kinds import KINDS, make_step
from bench.perf.parts.base import PartRun, error_line, free_memory

TITLE = "Largest physical batch per kind"


def _fits(run: PartRun, backbone: str, norm: str, kind: str, batch: int) -> bool:
    """Whether one step at ``batch`` runs: without a CUDA out-of-memory error on a GPU; on the
    CPU, with a tensor peak within `Sizes.cpu_mem_budget_bytes`."""
    s = run.sizes
    try:
        step, x, y = make_step(
            backbone, norm, kind, batch=batch, width=s.width, size=s.image, device=run.device
        )
        if run.device.type == "cuda":
            step(x, y)
            synchronize(run.device)
            return True
        return tensor_peak_bytes(lambda: step(x, y)) <= s.cpu_mem_budget_bytes
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        step = x = y = None
        free_memory(run.device)


def _tried(
    run: PartRun, res: dict[str, Any], backbone: str, norm: str, kind: str, batch: int
) -> bool:
    """`_fits`, with the answer kept in ``res["tried"]`` and saved."""
    ok = _fits(run, backbone, norm, kind, batch)
    res["tried"][str(batch)] = ok
    run.measured()
    return ok


def _search(run: PartRun, res: dict[str, Any], backbone: str, norm: str, kind: str) -> None:
    """Double from `Sizes.max_batch_start` until a step does not fit (or the cap), then bisect
    to within 1/16; the answer and what bounded the search go into ``res``."""
    s = run.sizes
    lo, hi, b = 0, None, s.max_batch_start
    while b <= s.max_batch_cap and not run.expired():
        if not _tried(run, res, backbone, norm, kind, b):
            hi = b
            break
        lo, b = b, b * 2
    while hi is not None and hi - lo > max(1, lo // 16) and not run.expired():
        mid = (lo + hi) // 2
        mid = mid - mid % 8 if mid > 64 else mid
        if mid <= lo:
            break
        ok = _tried(run, res, backbone, norm, kind, mid)
        lo, hi = (mid, hi) if ok else (lo, mid)
    res["largest"] = lo
    if hi is None:
        res["bound"] = "cap reached" if b > s.max_batch_cap else "time box"
    else:
        res["bound"] = "time box" if run.expired() else "bisected"
    res["first_failing"] = hi


def measure(run: PartRun) -> None:
    """Per kind, on (first backbone, default norm), the search of `_search`."""
    s = run.sizes
    backbone, norm = s.backbones[0], DEFAULT_NORM
    kinds: dict[str, dict[str, Any]] = {}
    run.data.update(backbone=backbone, norm=norm, width=s.width, image=s.image, kinds=kinds)
    if run.device.type != "cuda":
        run.data["criterion"] = f"tensor peak within {s.cpu_mem_budget_bytes / 2**20:.0f} MiB"
    else:
        total = torch.cuda.get_device_properties(run.device).total_memory
        run.data["criterion"] = f"no CUDA out-of-memory error ({total / 2**30:.1f} GiB device)"
    for kind in KINDS:
        if run.expired():
            run.notes.append(f"time box reached before {kind}")
            break
        res: dict[str, Any] = {"tried": {}}
        kinds[kind] = res
        try:
            _search(run, res, backbone, norm, kind)
        except Exception as err:
            res["error"] = error_line(err)
        run.measured()


def render(data: dict[str, Any]) -> list[str]:
    """One row per kind: the largest batch that fitted, the first that did not, the search."""
    out = [
        f"{data.get('backbone')} with {data.get('norm')}, width {data.get('width')}, "
        f"{data.get('image')}x{data.get('image')}, one view, fp32; fits: "
        f"{data.get('criterion')}. One process, one trial after another (fragmentation after "
        "a failed trial may lower a figure slightly).",
        "",
        "| kind | largest batch that fits | smallest tried that did not | search |",
        "|---|---|---|---|",
    ]
    for kind, r in data.get("kinds", {}).items():
        if "error" in r:
            out.append(f"| {kind} | failed: {r['error']} | | |")
            continue
        largest = r.get("largest")
        prefix = ">= " if r.get("first_failing") is None else ""
        out.append(
            f"| {kind} | {prefix}{largest} | {r.get('first_failing') or '-'} | "
            f"{r.get('bound', '-')}, tried {', '.join(r['tried'])} |"
        )
    return out
