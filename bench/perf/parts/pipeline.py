"""GPU-report part ``pipeline``: this engine against Opacus' tutorial loop, data included."""

from __future__ import annotations

from typing import Any

from bench.config import DEFAULT_NORM
from bench.perf.parts.base import PartRun
from bench.perf.tables import opacus_tutorial_comparison

TITLE = "The engine against Opacus' tutorial"


def measure(run: PartRun) -> None:
    """`opacus_tutorial_comparison` on (first backbone, default norm) at the pipeline sizes."""
    s = run.sizes
    run.data.update(
        backbone=s.backbones[0], norm=DEFAULT_NORM, batch=s.pipeline_batch, width=s.width
    )
    run.data.update(
        {k: getattr(s, f"pipeline_{k}") for k in ("steps", "warmup", "examples", "workers")}
    )
    same = {k: run.data[k] for k in ("batch", "steps", "warmup", "width", "workers")}
    run.data["result"] = opacus_tutorial_comparison(
        s.backbones[0], DEFAULT_NORM, n=s.pipeline_examples, device=run.device, **same
    )


def render(data: dict[str, Any]) -> list[str]:
    """The comparison's settings, then images/s of each loop and the engine's speed-up."""
    r = data.get("result")
    out = [
        f"{data.get('backbone')} with {data.get('norm')}, width {data.get('width')}, expected "
        f"batch {data.get('batch')} (Poisson), {data.get('examples')} random CIFAR-shaped "
        f"images, {data.get('steps')} timed steps after {data.get('warmup')}, data loading "
        f"included; Opacus' DataLoader with {data.get('workers')} workers and per-image "
        "torchvision crops and flips; the engine samples and augments on the device.",
        "",
    ]
    if not r:
        return [*out, "(not measured)"]
    return [
        *out,
        "| pipeline | images/s | engine speedup |",
        "|---|---|---|",
        f"| this engine (book-keeping) | {r['engine_img_s']:.0f} | 1.00 |",
        f"| Opacus tutorial, hooks | {r['opacus_tutorial_img_s']:.0f} | {r['speedup']:.2f} |",
        f"| Opacus tutorial, ghost | {r['opacus_tutorial_ghost_img_s']:.0f} | "
        f"{r['speedup_vs_ghost']:.2f} |",
    ]
