"""The ``python -m bench.perf`` command line: parses and dispatches to the perf modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import norms
from bench.backbones import list_backbones
from bench.config import DEFAULT_NORM
from bench.errors import BenchError
from bench.perf import scaling, window, window_slice, window_summary
from bench.perf.gpu_report import add_arguments, run_from_args
from bench.perf.kinds import KINDS, measure_one
from bench.perf.tables import opacus_tutorial_comparison, table

#: The step sizes ``one`` and ``table`` share, passed on as they are parsed.
SIZE_ARGS = ("batch", "width", "size", "warmup", "reps")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf",
        description="Perf measurements: DP/non-DP steps, the engine against Opacus, GPU report.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one", help="measure one configuration (prints JSON)")
    one.add_argument("backbone")
    one.add_argument("norm")
    one.add_argument("kind", choices=KINDS)
    tab = sub.add_parser("table", help="DP/non-DP time and memory ratios, every pair")
    opa = sub.add_parser("opacus", help="this engine against Opacus' tutorial loop")
    for p in (one, tab, opa):
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--warmup", type=int, default=1)
    for p in (one, tab):
        p.add_argument("--width", type=float, default=1.0)
        p.add_argument("--size", type=int, default=32)
        p.add_argument("--reps", type=int, default=3)
    one.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    tab.add_argument("--backbones", default=",".join(list_backbones()))
    tab.add_argument("--norms", default=",".join(norms.list_norms()))
    tab.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="which steps to time (nonprivate is always included)",
    )
    opa.add_argument("--backbone", default="wrn16_4")
    opa.add_argument("--norm", default=DEFAULT_NORM)
    opa.add_argument("--steps", type=int, default=5)
    opa.add_argument("--workers", type=int, default=0, help="the tutorial DataLoader's workers")
    add_arguments(sub.add_parser("gpu-report", help="every GPU figure, as one Markdown report"))
    window.add_arguments(
        sub.add_parser("gpu-window", help="tests, gpu-report and a CIFAR-10 slice in one budget")
    )
    unpack = sub.add_parser("gpu-window-unpack", help="a gpu-window's files into reports/")
    unpack.add_argument("files", type=Path, help="the folder holding the files it returned")
    unpack.add_argument("--reports", type=Path, default=Path("reports"))
    unpack.add_argument("--perf-name", help="the perf page's folder (default gpu_<device>)")
    unpack.add_argument("--slice-name", default=window_slice.NAME)
    unpack.add_argument("--allow-cpu", action="store_true", help="unpack a CPU rehearsal too")
    unpack.add_argument("--force", action="store_true", help="replace existing folders")
    scaling.add_arguments(sub.add_parser("scaling", help="one cell on 1 and W processes"))
    return parser


def _unpack(args: argparse.Namespace) -> int:
    placed = window_summary.unpack(
        args.files,
        args.reports,
        perf_name=args.perf_name,
        slice_name=args.slice_name,
        allow_cpu=args.allow_cpu,
        force=args.force,
    )
    for path in placed:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    if args.cmd == "gpu-window":
        return window.run_from_args(args, argv)
    if args.cmd == "gpu-window-unpack":
        return _unpack(args)
    if args.cmd == "gpu-report":
        return run_from_args(args, argv)
    if args.cmd == "scaling":
        return scaling.run_from_args(args)
    if args.cmd == "opacus":
        loop = {k: getattr(args, k) for k in ("batch", "steps", "warmup", "workers")}
        print(json.dumps(opacus_tutorial_comparison(args.backbone, args.norm, **loop)))
        return 0
    sizes = {k: getattr(args, k) for k in SIZE_ARGS}
    if args.cmd == "table":
        kinds = ("nonprivate", *[k for k in args.kinds.split(",") if k != "nonprivate"])
        print(table(args.backbones.split(","), args.norms.split(","), kinds=kinds, **sizes))
    else:
        one = measure_one(args.backbone, args.norm, args.kind, **sizes, precision=args.precision)
        print(json.dumps(one))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
