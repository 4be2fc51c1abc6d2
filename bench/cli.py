"""Command-line interface: parse arguments and dispatch; user errors become one line, exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bench.errors import USER_ERRORS


def _cmd_list(_args: argparse.Namespace) -> int:
    from bench.listing import render_listing

    print(render_listing())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark of normalisation layers for ResNets trained with DP-SGD.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_list = sub.add_parser("list", help="registered norms (parameters, DP status) and backbones")
    p_list.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
