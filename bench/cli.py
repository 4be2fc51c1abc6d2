"""Command-line interface: parse arguments and dispatch; user errors become one line, exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from bench.config import DEFAULT_NORM
from bench.environment import environment_from_records
from bench.errors import BenchError, PrivacyError, user_errors
from bench.sweep.options import RunOptions, SlurmOptions
from bench.sweep.outputs import default_out_dir, records_path

#: The exit code of a run stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def _cmd_list(_args: argparse.Namespace) -> int:
    from bench.listing import render_listing  # reason: torch (the registry), only for this command

    print(render_listing())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except PrivacyError as err:  # raised where the suite file is not known
        raise PrivacyError(f"{args.suite}: privacy: {err}") from None


def _run(args: argparse.Namespace) -> int:
    from bench.measure import resolve_device  # reason: torch, kept out of torch-free commands
    from bench.suite import load_suite  # reason: torch, kept out of the torch-free commands

    resolve_device(args.device)  # an unknown or absent device: one line before anything loads
    # --save-models is training.save_model for every cell: a diagnostic field, outside run keys.
    overrides = [*args.set, *(["training.save_model=true"] if args.save_models else [])]
    suite = load_suite(args.suite, overrides)
    out_dir = Path(args.out) if args.out else default_out_dir(suite)
    from bench.sweep import cost  # reason: torch, only for this command

    options = _run_options(args, out_dir)
    if args.dry_run:
        from bench.dryrun import render_dry_run  # reason: torch, only for this command

        spend = cost.estimate(suite, records_path(out_dir), args.device, options)
        print(
            "\n".join(
                [*cost.data_lines(suite), render_dry_run(suite, records_path(out_dir), spend)]
            )
        )
        return 0
    cost.check_suite_data(suite)
    spend = cost.estimate(suite, records_path(out_dir), args.device, options)

    def announce() -> None:  # once the sweep's own checks pass, before anything is written
        cost.print_cost(spend)
        if args.executor == "local":  # SLURM's jobs run elsewhere, their limits sized there
            cost.confirm(spend, args.yes)

    from bench.sweep.run import run_suite  # reason: torch, only for this command

    try:
        summary = run_suite(suite, options, announce)
    except KeyboardInterrupt:
        print(
            f"interrupted: finished cells are recorded in {records_path(out_dir)}; "
            f"run the same command again to resume (a cell stopped after a step resumes from "
            f"its checkpoint)",
            file=sys.stderr,
        )
        return INTERRUPTED
    counts = ", ".join(f"{n} {s}" for s, n in summary.statuses.items()) or "nothing to run"
    print(
        f"{summary.ran} of {summary.total} cells run ({counts}; {summary.already_done} "
        f"recorded earlier) in {summary.wall_s:.1f} s; leaderboard: "
        f"{summary.out_dir / 'leaderboard.md'}"
    )
    if summary.ran == 0 and summary.already_done:
        print(
            f"every cell is already recorded in {records_path(out_dir)}, so nothing trained; to "
            f"train again add --force (re-runs every cell from step 0 into this folder) or give "
            f"another --out folder",
            file=sys.stderr,
        )
    return 0


def _run_options(args: argparse.Namespace, out_dir: Path) -> RunOptions:
    """The sweep options ``run``'s flags give; each flag is named after its option."""
    flags = vars(args)
    slurm = SlurmOptions(**{f.name: flags[f"slurm_{f.name}"] for f in fields(SlurmOptions)})
    same_name = {f.name: flags[f.name] for f in fields(RunOptions) if f.name in flags}
    return RunOptions(**same_name, out_dir=out_dir, slurm=slurm, progress=not args.no_progress)


def _cmd_eval(args: argparse.Namespace) -> int:
    from bench.rescore import evaluate_saved  # reason: torch, only for this command

    e = evaluate_saved(Path(args.dir), args.run_key, device=args.device, data_root=args.data_root)
    correct = round(e.accuracy * e.n)
    print(
        f"{e.run_key}: {e.split}_acc {e.accuracy:.4f} ({correct}/{e.n}, {e.eval_weights} "
        f"weights, on {e.device}); recorded {e.recorded:.4f} (measured on {e.recorded_device})"
    )
    if not e.matches:
        rule = "exactly" if e.device == "cpu" else "to 4 decimals"
        print(
            f"error: run {e.run_key}: the saved weights score {e.accuracy!r} on the "
            f"{e.split} split, the record says {e.recorded!r} (must match {rule})",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    env_path, constraints_path = environment_from_records(Path(args.dir))
    print(f"wrote {env_path} and {constraints_path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.results.leaderboard import write_report  # scipy and matplotlib: report only

    path = write_report(Path(args.dir), baseline=args.baseline, alpha=args.alpha)
    print(f"wrote {path}")
    return 0


def _cmd_across(args: argparse.Namespace) -> int:
    from bench.results.across import write_across  # scipy: this report only

    print(f"wrote {write_across([Path(d) for d in args.dirs], Path(args.out))}")
    return 0


def _cmd_findings(args: argparse.Namespace) -> int:
    from bench.results.findings import write_findings  # scipy: findings only

    path = write_findings(Path(args.dir), Path(args.out) if args.out else None)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark of normalisation layers for ResNets trained with DP-SGD.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_list = sub.add_parser("list", help="registered norms (parameters, DP status) and backbones")
    p_list.set_defaults(func=_cmd_list)

    _add_run_parser(sub)
    _add_other_parsers(sub)
    return parser


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    p_run = sub.add_parser("run", help="run a suite (resumes: finished cells are skipped)")
    p_run.add_argument("suite", help="suite file, e.g. suites/smoke.yaml")
    p_run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a suite value, e.g. --set training.steps=100 (repeatable)",
    )
    p_run.add_argument(
        "--out",
        help="output directory (default runs/<suite name>, which git ignores; the published "
        "reports/<suite name> is rewritten only when named here)",
    )
    p_run.add_argument(
        "--force",
        action="store_true",
        help="re-run cells that have a record, from step 0 (their checkpoints are discarded)",
    )
    p_run.add_argument(
        "--save-models",
        action="store_true",
        help="save each finished run's final and EMA weights in OUT/models/<run_key>.pt "
        "(training.save_model; run keys unchanged); check one with 'bench eval'",
    )
    p_run.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's last checkpoint after its record is written (default: deleted)",
    )
    p_run.add_argument(
        "--allow-mixed-env",
        action="store_true",
        help="append to records made under another software stack (the report lists stacks)",
    )
    p_run.add_argument(
        "--retry-failed",
        action="store_true",
        help="also re-run cells whose record is failed (interrupted cells always re-run)",
    )
    p_run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the device, the cells that will run, their estimated time (one measured "
        "step each) and the grid with the calibrated noise per accountant; no training",
    )
    p_run.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p_run.add_argument("--executor", choices=("local", "slurm"), default="local")
    p_run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: one per visible GPU)",
    )
    _add_process_arguments(p_run)
    _add_slurm_arguments(p_run)
    _add_cost_arguments(p_run)
    p_run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_run.set_defaults(func=_cmd_run)


def _add_process_arguments(p_run: argparse.ArgumentParser) -> None:
    """``--nproc`` and its collective timeout (`RunOptions.nproc`, `bench.sweep.processes`)."""
    p_run.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes each cell runs on (one per GPU; gloo on the CPU); same result as one",
    )
    p_run.add_argument(
        "--collective-timeout-s",
        type=float,
        default=600.0,
        help="seconds a multi-process cell waits for a rank before it is recorded interrupted",
    )


def _add_cost_arguments(p_run: argparse.ArgumentParser) -> None:
    """What the pre-flight's estimate asks of a long sweep (`bench.sweep.cost`)."""
    p_run.add_argument(
        "--yes",
        action="store_true",
        help="run a sweep whose pre-flight estimate on this device is above 12 hours",
    )


def _add_slurm_arguments(p_run: argparse.ArgumentParser) -> None:
    """``--slurm-X`` fills `SlurmOptions.X` (see `_run_options`)."""
    p_run.add_argument("--slurm-partition")
    p_run.add_argument("--slurm-time-min", type=int)
    p_run.add_argument("--slurm-gpus", type=int, default=None)
    p_run.add_argument("--slurm-parallel", type=int, help="max array jobs running at once")
    p_run.add_argument(
        "--slurm-nodes", type=int, default=1, help="nodes per cell (one cell across nodes)"
    )
    p_run.add_argument(
        "--slurm-tasks-per-node",
        type=int,
        default=1,
        help="processes per node of each cell (one per GPU)",
    )
    p_run.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        help="local or debug: emulate the cluster with submitit's executors on this machine "
        "(to test a sweep's cluster path); default: SLURM, refused where it is absent",
    )
    p_run.add_argument(
        "--slurm-step-s",
        type=float,
        help="seconds per DP step on the cluster's device, to size the time limit when "
        "--slurm-time-min is not given (default: measured here)",
    )


def _add_other_parsers(sub: argparse._SubParsersAction) -> None:
    p_eval = sub.add_parser(
        "eval",
        help="re-evaluate a run's saved weights (--save-models) and compare with its record",
    )
    p_eval.add_argument("dir", help="a suite's output directory, e.g. reports/smoke")
    p_eval.add_argument("run_key", help="the run's run_key (the run_key field of its record)")
    p_eval.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 ...")
    p_eval.add_argument(
        "--data-root",
        help="where the run's data is, when the record's data.root does not lead there from here",
    )
    p_eval.set_defaults(func=_cmd_eval)

    p_env = sub.add_parser(
        "env", help="write DIR/environment.txt and DIR/constraints.txt from DIR/records.jsonl"
    )
    p_env.add_argument("dir", help="a suite's output directory, e.g. reports/smoke")
    p_env.set_defaults(func=_cmd_env)

    p_report = sub.add_parser("report", help="rebuild DIR/leaderboard.md from DIR/records.jsonl")
    p_report.add_argument("dir", help="a suite's output directory, e.g. reports/smoke")
    p_report.add_argument(
        "--baseline", help=f"baseline norm (default: the suite's, or {DEFAULT_NORM})"
    )
    p_report.add_argument("--alpha", type=float, help="significance level (default 0.05)")
    p_report.set_defaults(func=_cmd_report)

    p_across = sub.add_parser(
        "across", help="rank norms over datasets from several run folders: OUT/across.md"
    )
    p_across.add_argument("dirs", nargs="+", help="run folders, e.g. reports/a reports/b")
    p_across.add_argument("--out", default="runs/across", help="folder of across.md")
    p_across.set_defaults(func=_cmd_across)

    p_findings = sub.add_parser(
        "findings", help="write the findings page from every leaderboard's tested claims"
    )
    p_findings.add_argument("dir", help="the reports folder, e.g. reports (one suite a folder)")
    p_findings.add_argument("--out", help="the page to write (default: DIR/FINDINGS.md)")
    p_findings.set_defaults(func=_cmd_findings)


def _is_user_error(err: Exception) -> bool:
    """Whether the CLI reports ``err`` as one line with exit code 2.

    `BenchError` is checked first: `user_errors` imports `norms`, hence torch, which a torch-free
    command such as ``bench report`` must not load on its error path.
    """
    if isinstance(err, BenchError):
        return True
    return isinstance(err, user_errors())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
