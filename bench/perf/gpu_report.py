"""One command for every GPU figure: ``python -m bench.perf gpu-report --out DIR``.

It writes ``DIR/README.md`` (with ``results.json``, ``environment.txt`` and ``constraints.txt``
beside it): provenance (device, driver, versions, commit, command, date), then one section per
part of `PARTS`, in order:

* ``tests``: ``pytest -m gpu`` in a subprocess; counts, skip reasons, failures.
* ``table``: DP/non-DP step time and memory for ``wrn16_4`` and ``resnet9`` with every
  registered norm, for each of `bench.perf.kinds.KINDS`, and Opacus ghost / book-keeping.
* ``max_batch``: the largest physical batch each kind fits (doubling, then bisection).
* ``pipeline``: this engine against Opacus' tutorial loop (hooks and ghost), data included.
* ``bf16``: bf16 autocast against fp32, non-private and book-keeping steps.
* ``recipe``: one step of ``suites/cifar10_eps8.yaml``'s training configuration per
  (backbone, norm), projected to hours per run and for the whole suite; and the batch size the
  quick suite's TAN formula gives (``suites/cifar10_eps8_quick.yaml``'s header).

The parts live in `bench.perf.parts`; this module runs them and writes the report.
Each part has a time box (`Sizes.budgets_s`): it checks its deadline between measurements and
reports what it did not reach. A part that raises is reported as failed with its error; the
rest still runs. With ``--isolate`` (the default on a GPU) each part runs in its own process,
killed `GRACE_S` after its time box with what it had measured kept, so a hung kernel or a
poisoned CUDA context costs one part. Sizes: `FULL` on a GPU (about 8 minutes of an H100 in
all), `TINY` elsewhere (under a minute on 2 CPU cores: how CI runs it), and the report then says
that its figures are CPU figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench import atomic
from bench.environment import write_environment
from bench.errors import UsageError
from bench.measure import resolve_device
from bench.perf.parts import PARTS
from bench.perf.parts.base import SIZES, PartRun, Sizes, error_line
from bench.provenance import REPO, environment_facts, git_commit, package_version

#: Seconds an isolated part may run past its time box before it is killed.
GRACE_S = 15.0
#: A part's error when SIGINT stopped the report (``gpu-window`` at its stage's deadline): the
#: report is still written, with the part's measurements so far and the rest "not reached".
STOPPED = "stopped by SIGINT (the caller's deadline)"


def run_part(
    name: str,
    sizes: Sizes,
    device: torch.device,
    deadline: float,
    save_to: Path | None = None,
) -> dict[str, Any]:
    """Run one part in this process; a raised error becomes the part's ``failed`` status."""
    started = time.perf_counter()
    run = PartRun(name, sizes, device, deadline)
    result: dict[str, Any] = {"name": name, "status": "running"}
    result.update(data=run.data, notes=run.notes)

    def save() -> None:
        result["seconds"] = time.perf_counter() - started
        if save_to is not None:
            atomic.write_text(save_to, json.dumps(result))

    run.save = save
    try:
        PARTS[name][1](run)
        result["status"] = "time box" if run.notes and time.time() >= deadline else "ok"
    except KeyboardInterrupt:  # SIGINT from gpu-window at its deadline: keep what was measured
        result.update(status="killed", error=STOPPED, stopped=True)
    except Exception as err:
        result.update(
            status="failed", error=error_line(err), traceback=traceback.format_exc(limit=-6)
        )
    save()
    return result


def _run_isolated(
    name: str, sizes: Sizes, device: torch.device, deadline: float, out_dir: Path
) -> dict[str, Any]:
    """`run_part` in a child process, killed `GRACE_S` after the deadline; what it had saved
    survives a kill or a crash."""
    part_file = out_dir / f".part-{name}.json"
    part_file.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "bench.perf",
        "gpu-report",
        "--part",
        name,
        "--sizes",
        sizes.name,
        "--device",
        str(device),
        "--deadline",
        repr(deadline),
        "--part-out",
        str(part_file),
    ]
    started = time.perf_counter()
    status, error = None, None
    try:
        timeout = max(1.0, deadline + GRACE_S - time.time())
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            status = "failed"
            error = f"its process exited with code {proc.returncode}: " + " | ".join(
                proc.stderr.strip().splitlines()[-3:]
            )
    except subprocess.TimeoutExpired:
        status, error = "killed", f"killed {GRACE_S:.0f} s after its time box"
    except KeyboardInterrupt:  # subprocess.run has killed the part's process
        status, error = "killed", STOPPED
    try:
        result = json.loads(part_file.read_text())
        part_file.unlink()
    except (OSError, ValueError):
        result = {"name": name, "data": {}, "notes": []}
    if status is not None:
        result.update(status=status, error=error, stopped=error == STOPPED)
    result["seconds"] = time.perf_counter() - started
    return result


def _not_reached(name: str) -> dict[str, Any]:
    """A part the report did not start: it was stopped before (`STOPPED`)."""
    return {"name": name, "status": "not reached", "error": STOPPED, "data": {}, "notes": []}


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def provenance(device: torch.device, sizes: Sizes, command: str) -> dict[str, Any]:
    """Device, driver, versions, commit, command and date of this report."""
    env = environment_facts()
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "commit": git_commit(),
        "device": str(device),
        "sizes": sizes.name,
        "host": platform.node(),
        "cpu": env.get("cpu"),
        "cpu_threads": torch.get_num_threads(),
        "versions": {k: env.get(k) for k in ("python", "torch", "opacus", "timm", "torchvision")},
        "cuda_build": torch.version.cuda,
        "nvidia_smi": _nvidia_smi(),
        "environment": env,
    }
    for pkg in ("pytest", "pytest-benchmark"):
        info["versions"][pkg] = package_version(pkg)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            gpus=torch.cuda.device_count(),
        )
    else:
        info["device_name"] = f"CPU: {env.get('cpu')}"
    return info


def render(prov: dict[str, Any], results: list[dict[str, Any]], wall_s: float) -> str:
    """The whole report as Markdown."""
    on_gpu = prov["device"].startswith("cuda")
    lines = [f"# GPU report: {prov['device_name']}", ""]
    if not on_gpu or prov["sizes"] != "full":
        lines += [
            f"**These are {'CPU' if not on_gpu else 'tiny-size'} figures** ({prov['sizes']} "
            "sizes"
            + ("; no CUDA device" if not on_gpu else "")
            + "): they show that the command runs end to end, not how fast a GPU is.",
            "",
        ]
    v = prov["versions"]
    lines += [
        f"Made by `{prov['command']}` on {prov['date']}, code at commit {prov['commit']}, in "
        f"{wall_s:.0f} s.",
        "",
        "| provenance | |",
        "|---|---|",
        f"| device | {prov['device_name']}"
        + (
            f" (compute capability {prov['capability']}, {prov['memory_gib']} GiB, "
            f"{prov['gpus']} visible)"
            if on_gpu
            else ""
        )
        + " |",
        f"| driver (nvidia-smi) | {prov['nvidia_smi'] or 'nvidia-smi not available'} |",
        f"| CUDA (torch build) / cuDNN | {prov['cuda_build']} / {prov.get('cudnn')} |",
        f"| torch / opacus / timm / torchvision | {v['torch']} / {v['opacus']} / {v['timm']} / "
        f"{v['torchvision']} |",
        f"| python / pytest / pytest-benchmark | {v['python']} / {v['pytest']} / "
        f"{v['pytest-benchmark']} |",
        f"| host | {prov['host']}, {prov['cpu']}, {prov['cpu_threads']} torch threads |",
        "",
        "Full environment: `environment.txt`; pip pins: `constraints.txt`; every measured "
        "number: `results.json`.",
        "",
        "| part | status | seconds | time box (s) |",
        "|---|---|---|---|",
    ]
    for r in results:
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        lines.append(
            f"| {r['name']} | {status} | {r.get('seconds', 0):.0f} | {r.get('budget_s', 0):.0f} |"
        )
    for i, r in enumerate(results, start=1):
        title, _measure, render_part = PARTS[r["name"]]
        lines += ["", f"## {i}. {title}", ""]
        if r["status"] != "ok":
            error = f": `{r['error']}`" if r.get("error") else ""
            lines += [f"Status: **{r['status']}**{error}", ""]
        try:
            lines += render_part(r.get("data") or {})
        except Exception as err:  # a part's partial data may not render: say so, go on
            lines.append(f"(could not render what was measured: {error_line(err)})")
        lines += [f"- {n}" for n in r.get("notes", [])]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    *,
    sizes: Sizes,
    device: torch.device,
    parts: list[str],
    isolate: bool,
    budget_scale: float = 1.0,
    command: str,
    prior: list[dict[str, Any]] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run ``parts`` one after another and write ``out_dir/README.md``; returns its path and
    each part's result. ``prior`` holds results of parts measured before this call (by
    ``gpu-window``, which runs the CUDA tests first), reported ahead of the others."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [r for r in prior or [] if r.get("name") not in parts]
    for name in parts:
        budget = sizes.budgets_s[name] * budget_scale
        deadline = time.time() + budget
        print(f"gpu-report: {name} (time box {budget:.0f} s)", file=sys.stderr, flush=True)
        if isolate:
            result = _run_isolated(name, sizes, device, deadline, out_dir)
        else:
            result = run_part(name, sizes, device, deadline)
        result["budget_s"] = budget
        results.append(result)
        print(
            f"gpu-report: {name}: {result['status']} in {result.get('seconds', 0):.0f} s"
            + (f" ({result['error']})" if result.get("error") else ""),
            file=sys.stderr,
            flush=True,
        )
        if result.get("stopped"):
            results += [_not_reached(p) for p in parts[parts.index(name) + 1 :]]
            break
    wall = time.perf_counter() - started
    # After the parts: in the parent, CUDA's context (and its memory) is made only now.
    prov = provenance(device, sizes, command)
    source = f"captured by gpu-report, {prov['date']}"
    write_environment(out_dir, prov["environment"], source, command)
    (out_dir / "results.json").write_text(
        json.dumps({"provenance": prov, "sizes": asdict(sizes), "parts": results}, indent=1)
    )
    path = out_dir / "README.md"
    path.write_text(render(prov, results, wall))
    return path, results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="folder for README.md, results.json, environment")
    p.add_argument(
        "--sizes",
        choices=("auto", *SIZES),
        default="auto",
        help="full (GPU), tiny (CPU, CI); auto: full on a CUDA device, tiny elsewhere",
    )
    p.add_argument("--tiny", action="store_true", help="same as --sizes tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated, in report order")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each part in its own process (default: on a CUDA device)",
    )
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every time box")
    p.add_argument(
        "--prior",
        type=Path,
        help="JSON list of part results measured earlier (gpu-window's CUDA tests), reported first",
    )
    # One part in this process, for --isolate (internal).
    p.add_argument("--part", choices=tuple(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--part-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


def _read_prior(path: Path | None) -> list[dict[str, Any]]:
    """The part results in ``path`` (a JSON list), those of unknown parts left out."""
    if path is None:
        return []
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(
            f"--prior {path}: not a readable JSON list of part results ({err})"
        ) from None
    if not isinstance(results, list):
        raise UsageError(f"--prior {path}: holds {type(results).__name__}, not a list")
    return [r for r in results if isinstance(r, dict) and r.get("name") in PARTS]


def run_from_args(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """The ``gpu-report`` subcommand: 0 when every part ran (time boxes included), 1 when one
    failed, 2 on a usage error."""
    device = resolve_device(args.device)
    name = "tiny" if args.tiny else args.sizes
    if name == "auto":
        name = "full" if device.type == "cuda" else "tiny"
    sizes = SIZES[name]
    if args.part:
        run_part(args.part, sizes, device, args.deadline or time.time() + 60, args.part_out)
        return 0
    if args.out is None:
        print("error: gpu-report needs --out DIR", file=sys.stderr)
        return 2
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"error: unknown part(s) {unknown}; parts are {list(PARTS)}", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m bench.perf " + " ".join(shlex.quote(a) for a in argv)
    isolate = device.type == "cuda" if args.isolate is None else args.isolate
    path, results = write_report(
        args.out,
        sizes=sizes,
        device=device,
        parts=parts,
        isolate=isolate,
        budget_scale=args.budget_scale,
        command=command,
        prior=_read_prior(args.prior),
    )
    print(path)
    return 1 if any(r["status"] in ("failed", "killed") for r in results) else 0
