"""The leaderboard's sections after the tables: how each norm is private, tuning, figures,
failed runs, software stacks, missing cells and problems in the records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.results import figures
from bench.results.leaderboard.collect import block_of, is_tuning, seed_key
from bench.results.leaderboard.markdown import NA, cell_text, code, distinct, join, table
from bench.results.leaderboard.order import numeric_key
from bench.results.leaderboard.settings import SUITE_FILE, suite_section
from bench.results.leaderboard.tuning_table import tuning_grid_lines
from bench.results.leaderboard.with_tuning import tuning_privacy_lines
from bench.results.record import Record
from bench.results.records import run_identity
from bench.results.stacks import stack_text, stacks


def figures_section(has_ok: bool, simulated: bool = False) -> list[str]:
    """Links to the figures `write_report` draws, or why there are none; ``simulated``: the TAN
    simulations' own figures (`figures.figure_name`)."""
    lines = ["## Figures", ""]
    if not has_ok:
        return [*lines, "No figures: there is no ok run.", ""]
    for name in figures.FIGURE_FILES:
        name = figures.figure_name(name, simulated)
        lines += [f"![{Path(name).stem.replace('_', ' ')}]({name})", ""]
    return lines


def problems_section(problems: Sequence[str]) -> list[str]:
    """The records the tables could not use, and why; empty when there are none."""
    if not problems:
        return []
    return ["## Problems in the records", "", *[f"- {cell_text(p)}" for p in problems], ""]


def stacks_section(records: Sequence[Record]) -> list[str]:
    """Which records came from which software stack, when there is more than one (a sweep
    resumed under ``--allow-mixed-env``): a confound the statistics cannot see."""
    groups = stacks(records)
    if len(groups) < 2:
        return []
    rows = [
        [
            stack_text(stack),
            str(len(group)),
            cell_text(
                ", ".join(
                    sorted(f"{block_of(r)} {r.get('norm')} seed={r.get('seed')}" for r in group)
                )
            ),
        ]
        for stack, group in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]
    shown = table(rows, ["stack", "records", "runs"])
    return [
        "## Software stacks",
        "",
        "These records were made under more than one software stack; differences between "
        "norms may partly be differences between stacks.",
        "",
        shown,
        "",
    ]


def privacy_section(records: Sequence[Record]) -> list[str]:
    """What each norm reads across examples and what it costs, from the records' own words
    (``norm_dp_status``, ``norm_dp_note``, ``privacy_charges``), and what the sparsity masks
    read: the leaderboard says which choices are free and which are paid for in ε."""
    finals = [r for r in records if not is_tuning(r) and r.get("norm_dp_status")]
    if not finals:
        return []
    by_norm: dict[str, list[Record]] = {}
    for r in finals:
        by_norm.setdefault(str(r.get("norm")), []).append(r)
    rows = []
    for norm, runs in sorted(by_norm.items()):
        # A charge's description already names its mechanism's parameters (the norm writes
        # it); the fields are spelled out only for a charge that comes without one.
        charges = distinct(
            str(c["description"])
            if c.get("description")
            else f"σ = {c.get('noise_multiplier')}, q = {c.get('sample_rate')}, "
            f"{c.get('steps')} releases"
            for r in runs
            for c in (r.get("privacy_charges") or [])
            if isinstance(c, Mapping)
        )
        rows.append(
            [
                code(norm),
                cell_text(join(distinct(r.get("norm_dp_status") for r in runs))),
                cell_text(join(distinct(r.get("norm_dp_note") for r in runs))),
                cell_text(join(charges, "none")),
            ]
        )
    lines = [
        "## How each norm is private",
        "",
        "From the records: what the norm reads across examples, and what that costs. A charge "
        "is composed with the DP-SGD steps by the run's accountant, so the ε spent above "
        "includes it; public data costs nothing.",
        "",
        table(rows, ["norm", "status", "what it reads, what it costs", "charges in ε"]),
        "",
    ]
    masks = [r["sparsity"] for r in finals if isinstance(r.get("sparsity"), Mapping)]
    if masks:
        private = [m for m in masks if m.get("reads_private_data") is not False]
        lines += [
            f"Pre-pruning and gradient-dropping masks ({len(masks)} runs): "
            + (
                "none of them read private data, so they cost no ε."
                if not private
                else f"**{len(private)} runs' masks are not recorded as private-data-free.**"
            ),
            "",
        ]
    return lines


def failed_section(
    not_ok: Sequence[Record], replaced: Sequence[Record] = (), records: Sequence[Record] = ()
) -> list[str]:
    """The runs that did not end ok, with their reasons; then the finished attempts a re-run
    replaced (``replaced``: the superseded file's records; ``records``: the current ones)."""
    lines = ["## Failed and skipped runs", ""]
    if not not_ok:
        return [*lines, "None.", "", *_replaced_lines(replaced, records)]
    rows = [
        [
            code(block_of(r)),
            code(r["norm"]),
            NA if r.get("seed") is None else str(r.get("seed")),
            r["status"],
            cell_text(r.get("error") or "no reason recorded"),
        ]
        for r in sorted(
            not_ok,
            key=lambda r: (
                numeric_key(block_of(r)),
                r["norm"],
                seed_key(r.get("seed")),
                r["run_key"],
            ),
        )
    ]
    shown = table(rows, ["backbone", "norm", "seed", "status", "reason"])
    if any(r["status"] == "interrupted" for r in not_ok):
        lines += [
            "`interrupted` runs ended by the infrastructure (a time limit, preemption, a lost "
            "worker, a job that ended without a record), not by the cell: re-running the suite "
            "runs them again. `failed` runs belong to the cell; `--retry-failed` re-runs them.",
            "",
        ]
    return [*lines, shown, "", *_replaced_lines(replaced, records)]


def _by_cell(r: Record) -> tuple:
    return (numeric_key(block_of(r)), r["norm"], seed_key(r.get("seed")), r["run_key"])


def _replaced_lines(replaced: Sequence[Record], records: Sequence[Record]) -> list[str]:
    """Each finished attempt (``ok`` or ``failed``) that a ``--retry-failed`` or ``--force``
    re-run replaced: the tables hold one record per run, its newest, so a run retried until it
    succeeded is in them as a success; these attempts say what came before. An ``interrupted``
    attempt is not listed (its run resumed and finished as the newer record), nor a record a
    kill left in both files."""
    now = {r["run_key"]: r for r in records}
    current = {run_identity(r) for r in records}
    seen: set[str] = set()
    earlier = []
    for r in replaced:
        line = run_identity(r)
        if r.get("status") in ("ok", "failed") and line not in current and line not in seen:
            seen.add(line)
            earlier.append(r)
    if not earlier:
        return []
    rows = [
        [
            code(block_of(r)),
            code(str(r.get("norm"))),
            NA if r.get("seed") is None else str(r.get("seed")),
            str(r.get("stage") or "final"),
            r["status"],
            cell_text(r.get("error") or ("" if r["status"] == "ok" else "no reason recorded")),
            now[r["run_key"]]["status"] if r["run_key"] in now else "no record",
        ]
        for r in sorted(earlier, key=_by_cell)
    ]
    finals = sum(not is_tuning(r) for r in earlier)
    return [
        "### Attempts a re-run replaced",
        "",
        f"{len(earlier)} finished attempt(s) ({finals} of final runs) were replaced by a "
        "`--retry-failed` or `--force` re-run of the same run key; they are kept in "
        "`records.superseded.jsonl`. The tables and their intention-to-treat statistics count "
        "each run once, by its newest record (the *now* column), so a run retried until it "
        "succeeded counts as a success. Each attempt is charged as if it trained on the private "
        "set (in full, even one that failed early): a tuned suite's ε with tuning composes them; "
        "a table's ε is the newest run's alone.",
        "",
        table(rows, ["backbone", "norm", "seed", "stage", "attempt", "reason", "now"]),
        "",
    ]


def tuning_section(
    tuning: Sequence[Record], suite: Mapping, records: Sequence[Record] = ()
) -> list[str]:
    """The protocol statement, what the scores reveal and what ε covers
    (`with_tuning.tuning_privacy_lines`, from ``records``: every record), and the tuning table:
    each norm's validation accuracy per candidate value (`tuning_table.tuning_grid_lines`), the
    selected one marked."""
    if not tuning and not suite.get("tune"):
        return []
    n_val = distinct(r.get("n_val") for r in tuning) or distinct(
        [suite_section(suite, "data").get("val_split")]
    )
    lines = [
        "## Tuning (validation split)",
        "",
        f"Protocol: the hyperparameters below were tuned per norm on a validation split of "
        f"{join(n_val)} private training examples, held out of the tuning runs, which are "
        "scored on it and never read the test set; the final runs above train on the whole "
        "private set (validation split included) at each norm's selected values and are scored "
        "on the test set.",
        "",
        *tuning_privacy_lines(records or tuning),
    ]
    tune = suite.get("tune") if isinstance(suite.get("tune"), Mapping) else {}
    changed = tune.get("overrides") if isinstance(tune.get("overrides"), Mapping) else {}
    if changed:
        text = ", ".join(f"`{k}={cell_text(v)}`" for k, v in changed.items())
        swept = [k for k in changed if k in (suite.get("grid") or {})]
        lines += [
            f"The tuning runs ran with {text} (`tune.overrides`)"
            + (
                f"; {join([f'`{k}`' for k in swept])} is swept by the grid, so every value of it "
                "shares these tuning runs and their selection, listed under the value the runs "
                "were made at."
                if swept
                else "."
            ),
            "",
        ]
    return lines + tuning_grid_lines(tuning, records or tuning, list(changed))


def missing_section(planned: Sequence[Mapping], recorded_keys: set[str]) -> list[str]:
    """The planned cells of suite.json that have no record yet."""
    lines = ["## Missing cells", ""]
    missing = [c for c in planned if c["run_key"] not in recorded_keys]
    if not missing:
        return [*lines, f"All {len(planned)} cells of `{SUITE_FILE}` have a record.", ""]
    rows = [
        [
            code(block_of(c)),
            code(c.get("norm")),
            cell_text(c.get("seed")),
            cell_text(c["run_key"]),
        ]
        for c in sorted(
            missing,
            key=lambda c: (
                numeric_key(block_of(c)),
                str(c.get("norm")),
                seed_key(c.get("seed")),
                c["run_key"],
            ),
        )
    ]
    return [
        *lines,
        f"{len(missing)} of {len(planned)} cells of `{SUITE_FILE}` have no record (not run yet, "
        "or the sweep was interrupted; re-running the suite resumes them).",
        "",
        table(rows, ["backbone", "norm", "seed", "run key"]),
        "",
    ]
