"""The software environment of a sweep: captured when it starts, written beside its records.

``environment.txt`` says what ran (Python, every dependency's exact version, CUDA and cuDNN, the
CPU or GPU) and ``constraints.txt`` pins it for pip, so that a reader reproduces a published
table with ``pip install -c constraints.txt -e .`` and then the report's command. A sweep whose
records came from another stack refuses to append (`check_stack`) unless mixing is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench import atomic
from bench.errors import BenchError
from bench.results.record import Record
from bench.results.records import read_records
from bench.results.stacks import constraints_text, differences, stack_of, stack_text, stacks

ENVIRONMENT_FILE = "environment.txt"
CONSTRAINTS_FILE = "constraints.txt"


class MixedEnvironmentError(BenchError):
    """Raised when a sweep would append records made under another software stack."""


def environment_text(versions: Mapping[str, object], source: str) -> str:
    """``environment.txt``: one ``key: value`` line per fact, after a line saying its source."""
    lines = [f"# {source}"]
    lines += [f"{k}: {v}" for k, v in versions.items() if v is not None]
    return "\n".join(lines) + "\n"


#: The line above the captures of a sweep's earlier parts in ``environment.txt``.
EARLIER_MARK = "# earlier captures of this sweep (where its older records were made):"


def _newest_facts(text: str) -> list[str]:
    """The ``key: value`` lines of the newest (first) capture in an ``environment.txt``."""
    facts = []
    for line in text.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.strip():  # the blank line above EARLIER_MARK is not a fact
            facts.append(line)
    return facts


def capture_environment(
    out_dir: Path,
    versions: Mapping[str, object],
    source: str,
    reproduce: str | None = None,
    resumed: bool = False,
) -> tuple[Path, Path]:
    """Record the environment a sweep (or a resumed part of one) runs in.

    A fresh sweep writes ``environment.txt`` and ``constraints.txt`` as `write_environment`
    does. A resumed one (``resumed``: the folder already holds records) keeps
    ``environment.txt`` when nothing differs, so the capture keeps the time its first part
    started; when something differs (another host: a platform or CPU; a mixed stack under
    ``--allow-mixed-env``), the new capture goes first and the earlier ones stay below it, so
    that the file still says where the older records were made. ``constraints.txt`` is
    rewritten every time: it pins the newest part's stack and names the command that made the
    whole folder (a resume may widen the grid).
    """
    path = out_dir / ENVIRONMENT_FILE
    new = environment_text(versions, source)
    earlier = path.read_text() if resumed and path.exists() else None
    if earlier is not None and _newest_facts(earlier) == _newest_facts(new):
        new = earlier
    elif earlier is not None:
        newest, _, older = earlier.partition(EARLIER_MARK + "\n")
        new += "\n" + EARLIER_MARK + "\n" + newest + older
    return write_environment(out_dir, versions, source, reproduce, environment=new)


def write_environment(
    out_dir: Path,
    versions: Mapping[str, object],
    source: str,
    reproduce: str | None = None,
    environment: str | None = None,
) -> tuple[Path, Path]:
    """Write ``environment.txt`` (``environment`` when given, else the capture of
    ``versions``) and ``constraints.txt`` into ``out_dir``, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [source, "install with: pip install -c constraints.txt -e ."]
    if reproduce:
        header.append(f"then run: {reproduce}")
    written = []
    for name, text in (
        (ENVIRONMENT_FILE, environment or environment_text(versions, source)),
        (CONSTRAINTS_FILE, constraints_text(versions, header)),
    ):
        path = out_dir / name
        atomic.write_text(path, text)
        written.append(path)
    return written[0], written[1]


def check_stack(
    records: Sequence[Record], current: Mapping[str, object], records_path: Path, allow: bool
) -> None:
    """Refuse to append to records made under another stack (torch, opacus, timm, CUDA).

    Raises:
        MixedEnvironmentError: One line naming what differs and offering ``--allow-mixed-env``.
    """
    if allow:
        return
    here = stack_of(current)
    for stack, group in stacks(records).items():
        diff = differences(stack, here)
        if diff:
            raise MixedEnvironmentError(
                f"{records_path}: {len(group)} record(s) were made under {stack_text(stack)}, "
                f"this environment differs ({'; '.join(diff)}); appending would mix software "
                f"stacks in one table. Install the recorded stack (constraints.txt beside the "
                f"records) or pass --allow-mixed-env, and the report will list the stacks"
            )


def environment_from_records(run_dir: Path) -> tuple[Path, Path]:
    """Write ``environment.txt`` and ``constraints.txt`` for a published report from what its
    records say (the stack most of them were made under, named in the file's first line).

    Raises:
        RecordsError: When the records cannot be read; BenchError when none has provenance.
    """
    records = read_records(run_dir / "records.jsonl").records
    groups = stacks(records)
    if not groups:
        raise BenchError(f"{run_dir / 'records.jsonl'}: no record has provenance")
    stack, group = max(groups.items(), key=lambda item: len(item[1]))
    versions = {k: v for k, v in group[-1]["provenance"].items() if k != "hostname"}
    versions["device"] = group[-1].get("device")
    note = (
        f"; {len(groups)} stacks in these records, this is the one of most"
        if len(groups) > 1
        else ""
    )
    source = (
        f"from the provenance of {len(group)} of {len(records)} records in "
        f"{run_dir / 'records.jsonl'} ({stack_text(stack)}{note}); packages the records do not "
        "name are not pinned"
    )
    return write_environment(run_dir, versions, source, _reproduce_from_suite(run_dir))


def _reproduce_from_suite(run_dir: Path) -> str | None:
    """The run command recorded in ``suite.json`` (file and overrides), if there is one."""
    try:
        suite = json.loads((run_dir / "suite.json").read_text())
    except (OSError, ValueError):
        return None
    parts = ["python -m bench run", str(suite.get("path") or "<suite>")]
    parts += [f"--set '{item}'" for item in suite.get("overrides") or []]
    return " ".join([*parts, "--out", str(run_dir)])
