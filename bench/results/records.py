"""The records file: one JSON object per run, appended atomically, read back line by line."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import atomic
from bench.errors import RecordsError
from bench.results.record import FINAL_STATUSES, Record, check_record

try:  # POSIX only; without it concurrent writers are not serialised (see append_record).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@dataclass(frozen=True)
class RecordsRead:
    """What :func:`read_records` found in a records file.

    Attributes:
        records: The usable records, one per run key (the last line for that key wins), in the
            order of those lines in the file.
        problems: One message per unusable line, ``"<path>:<line>: <what is wrong>"``.
    """

    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _finite_or_none(value: object) -> object:
    """``value`` with every float nan/inf (at any depth) replaced by None; JSON has no nan."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def serialise_record(record: Mapping) -> str:
    """One record as one line of JSON (keys sorted, nan/inf written as null), no newline.

    Raises:
        TypeError: When a value is not JSON-serialisable (e.g. a tensor left in the record).
    """
    return json.dumps(_finite_or_none(record), sort_keys=True, allow_nan=False)


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock shared by every writer of ``path``.

    Appending is read-modify-replace, so two writers (e.g. Slurm array jobs sharing one records
    file) could each replace the file with their own addition and lose the other's. The lock
    lives in a sidecar file because ``os.replace`` swaps the records file's inode under any lock
    taken on the file itself.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def superseded_path(path: Path) -> Path:
    """Where the records a re-run replaced are kept: ``records.superseded.jsonl`` beside
    ``records.jsonl``: the audit trail of ``--force`` and ``--retry-failed``. The tables never
    read it; the leaderboard lists its finished attempts (`leaderboard.sections`), and the
    tuned procedure's epsilon charges each finished run in it: a tuning run in its grid
    point's tuning cost (`bench.sweep.protocol.tuning_by_group`), an earlier attempt of a
    final run in that run's (`bench.sweep.run`)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.superseded{path.suffix}")


def _run_key_of(line: bytes) -> str | None:
    """The run key of one records line, or None for a line that is not a record."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record.get("run_key") if isinstance(record, dict) else None


def append_record(path: Path, record: Mapping) -> None:
    """Append one record to a records file, atomically, replacing its run key's older records.

    A run key has one record in the file: the lines of earlier records with the same run key
    (an ``interrupted`` attempt, the record a ``--force`` or ``--retry-failed`` re-run
    replaces) move to `superseded_path`, never read by the tables, and the new record becomes
    the last line. Lines that are not records are left where they are, for `read_records` to
    report.

    Both files are written whole to a temporary file in the same directory, flushed and
    fsynced, then moved over the old one (`bench.atomic`), the superseded file first. A process
    killed at any point (even by SIGKILL) therefore leaves each file old or new, never a
    partial line, and never loses a record: at worst an old record is in both files, and the
    next write of its run key does not copy it twice. Parent directories are created. Floats
    that are nan or inf are written as null (strict JSON).

    Args:
        path: The records file (``reports/<suite>/records.jsonl``).
        record: The run's record; must at least hold ``run_key`` and ``status``.

    Raises:
        TypeError: When the record holds a value JSON cannot represent.
    """
    path = Path(path)
    line = (serialise_record(record) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(path):
        try:
            old = path.read_bytes()
        except FileNotFoundError:
            old = b""
        # A line cut short by a crash of some other tool stays a line of its own, or the new
        # record would be glued onto it and lost with it.
        key = record.get("run_key")
        kept: list[bytes] = []
        replaced: list[bytes] = []
        for raw in old.splitlines(keepends=True):
            raw = raw if raw.endswith(b"\n") else raw + b"\n"
            same = key is not None and bool(raw.strip()) and _run_key_of(raw) == key
            (replaced if same else kept).append(raw)
        if replaced:
            _supersede(superseded_path(path), replaced)
        atomic.write_bytes(path, b"".join([*kept, line]))


def _supersede(path: Path, lines: list[bytes]) -> None:
    """Append ``lines`` to the superseded file, atomically, skipping any already there (a
    write killed between the two files left them in both)."""
    try:
        old = path.read_bytes()
    except FileNotFoundError:
        old = b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    present = set(old.splitlines(keepends=True))
    atomic.write_bytes(path, old + b"".join(x for x in lines if x not in present))


#: The fields `revise_record` may rewrite after a run ended, by prefix: a final run's
#: ``epsilon_with_tuning`` and what goes with it (`bench.sweep.restate`). Nothing else of a
#: record changes once it is written, so `run_identity` leaves these out.
REVISABLE_PREFIX = "epsilon_with_tuning"


def run_identity(record: Mapping) -> str:
    """What makes two records one finished run, for counting runs and attempts: the record
    as sorted JSON without its revisable fields (`REVISABLE_PREFIX`). A record a kill left in
    both the records file and the superseded file is one run, and stays one after
    `revise_record` updated the copy in the records file."""
    kept = {k: v for k, v in record.items() if not str(k).startswith(REVISABLE_PREFIX)}
    return json.dumps(kept, sort_keys=True, default=str)


def revise_record(path: Path, run_key: str, revise: Callable[[Record], Mapping | None]) -> bool:
    """Rewrite the record of ``run_key`` in place with the fields ``revise`` returns, atomically
    and under the writers' lock; True when it did.

    For a figure derived from other records that changed after this one was written (a final
    run's ``epsilon_with_tuning``: `bench.sweep.restate`), not for a re-run: the run is the same
    and nothing moves to the superseded file (which would count it as a second run). ``revise``
    reads the record as it is under the lock, so two processes revising one record do it once;
    it returns None to leave the record alone. The caller keeps what it replaces in the record.
    Only the revisable fields (`REVISABLE_PREFIX`) may change: the run's identity
    (`run_identity`) is the same before and after.

    Raises:
        ValueError: When ``revise`` returns a field that is not revisable.
    """
    path = Path(path)
    with _writer_lock(path):
        try:
            old = path.read_bytes()
        except FileNotFoundError:
            return False
        lines = old.splitlines(keepends=True)
        for i in reversed(range(len(lines))):
            if _run_key_of(lines[i]) != run_key:
                continue
            fields = revise(json.loads(lines[i].decode("utf-8")))
            if fields is None:
                return False
            fixed = sorted(k for k in fields if not str(k).startswith(REVISABLE_PREFIX))
            if fixed:
                raise ValueError(f"revise_record: a written record's {fixed} cannot change")
            record = {**json.loads(lines[i].decode("utf-8")), **fields}
            lines[i] = (serialise_record(record) + "\n").encode("utf-8")
            atomic.write_bytes(path, b"".join(lines))
            return True
    return False


def read_records(path: Path) -> RecordsRead:
    """Read a records file, reporting bad lines instead of failing on them.

    A line that is not valid JSON (e.g. the last line of a file cut short), or that
    :func:`bench.results.record.check_record` refuses (not an object, no ``run_key``/``status``,
    a non-number in a numeric field such as ``"test_acc": "0.5"``), becomes one problem naming
    the file and its 1-based line number; every other record is still returned. Blank lines are
    ignored. The records returned therefore hold a finite number or None in every field of
    :data:`bench.results.record.NUMERIC_FIELDS` they have.

    When one run key has several records, the LAST one wins. `append_record` keeps one per run
    key (a re-run's record replaces the old one, which moves to `superseded_path`), but a file
    written by an older version, or merged by hand, may hold several.

    Args:
        path: The records file.

    Returns:
        The usable records and the problems found.

    Raises:
        RecordsError: When the file does not exist or cannot be read at all.
    """
    every, problems = _read_every_record(path)
    by_key: dict[str, Record] = {}
    for record in every:
        # Re-inserting moves a re-run to the position of its newest line.
        by_key.pop(record["run_key"], None)
        by_key[record["run_key"]] = record
    return RecordsRead(records=list(by_key.values()), problems=problems)


def read_every_record(path: Path) -> list[Record]:
    """Every usable record of a records file in file order, several of one run key included
    (the superseded file keeps each record a re-run replaced: `superseded_path`); bad lines
    are skipped, as `read_records` reports them. Raises `RecordsError` as `read_records`."""
    return _read_every_record(path)[0]


def _read_every_record(path: Path) -> tuple[list[Record], list[str]]:
    """Every usable record in file order, and the problems of the lines that are not."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordsError(f"records file not found: {path}") from None
    except OSError as err:
        raise RecordsError(f"cannot read records file {path}: {err.strerror or err}") from None

    every: list[Record] = []
    problems: list[str] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            # With no newline after it, the last line is most likely a write cut short.
            kind = "truncated or invalid JSON" if number == len(lines) else "invalid JSON"
            problems.append(f"{path}:{number}: {kind} ({err})")
            continue
        problem = check_record(record)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
            continue
        every.append(record)
    return every, problems


def finished_keys(path: Path, statuses: tuple[str, ...] = FINAL_STATUSES) -> set[str]:
    """The run keys whose newest record has one of ``statuses`` (what a resumed sweep skips).

    By default every status but ``interrupted``: a run the infrastructure ended (time limit,
    preemption, lost worker) is run again by a plain re-run, one that ended on its own is not.

    Args:
        path: The records file; it need not exist yet.
        statuses: The statuses that count as finished.

    Returns:
        The run keys; empty when the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        return set()
    return {r["run_key"] for r in read_records(path).records if r["status"] in statuses}
