"""``bench across``: norms ranked over datasets, from the records of several run folders.

Each dataset is its own suite today (``suites/cifar10_eps8_quick.yaml``,
``svhn_eps8_quick.yaml``, ...), so its records sit in its own folder. This command reads each
folder's records (torch-free), sorts every table (a backbone at one value of each swept key)
by the dataset it ran on and by its setting: backbone, privacy budget (epsilon, delta), steps
and every key some folder sweeps (read from each record's config where that folder does not
sweep it). Tables of different datasets at one setting are ranked together with datasets as
blocks (`bench.results.leaderboard.across.dataset_lines`: the norm x dataset table of
accuracies under intention to treat, average ranks, the Friedman test with its exact
permutation p, Kendall's tau between datasets). Settings that ran on one dataset only are
listed, not ranked; when no setting ran on two datasets with norms in common, the command
says what differs and exits 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import atomic
from bench.errors import ComparisonError
from bench.results.leaderboard.across import (
    DATASET_KEY,
    DATASETS_INTRO,
    Fixed,
    dataset_lines,
    fixed_text,
    itt_scores,
)
from bench.results.leaderboard.collect import collect, is_simulated, is_tuning
from bench.results.leaderboard.markdown import code
from bench.results.leaderboard.protocol import resolve_protocol
from bench.results.leaderboard.settings import RECORDS_FILE, SUITE_FILE, load_suite
from bench.results.leaderboard.sweeps import value_key
from bench.results.record import Record, grid_value_text
from bench.results.records import read_records
from bench.results.stats import Seeds

ACROSS_FILE = "across.md"

#: The budget every compared table must share, with the record field that holds each value.
BUDGET_FIELDS = {
    "privacy.epsilon": "epsilon_target",
    "privacy.delta": "delta",
    "training.steps": "steps",
}

#: Config sections whose differences between datasets the report lists (the data differ by
#: design).
_COMPARED_SECTIONS = ("privacy", "training")
UNSET = "unset"


@dataclass(frozen=True)
class DatasetTable:
    """One table of one folder: the dataset it ran on, its setting and its scores.

    Attributes:
        folder: The run folder, as given.
        dataset: The dataset's name (the records' ``dataset``, else ``data.source``).
        setting: Backbone, budget and swept values, as `Fixed` (sorts numbers numerically).
        scores: Each norm's accuracy per seed under intention to treat.
        record: The table's first record (by run key), for its setting.
        runs: Every run of the table, ok or failed, for the configs it compares (a key tuned
            per norm differs between the table's own runs).
    """

    folder: str
    dataset: str
    setting: Fixed
    scores: dict[str, Seeds]
    record: Record
    runs: tuple[Record, ...]


def write_across(folders: Sequence[Path], out_dir: Path) -> Path:
    """Write ``out_dir/across.md`` from the run folders' records (atomically).

    Raises:
        RecordsError: A folder has no readable records file or an unreadable suite.json.
        ComparisonError: Nothing is comparable across the folders, or two folders hold one
            dataset at one setting.
    """
    text = across_text(folders)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ACROSS_FILE
    atomic.write_text(path, text)
    return path


def across_text(folders: Sequence[Path]) -> str:
    """The Markdown of the across-datasets report; deterministic (no clock, all sorted)."""
    tables, notes = read_tables(folders)
    groups = _by_setting(tables)
    compared = {s: g for s, g in groups.items() if len(g) >= 2 and _shared_norms(g) >= 2}
    if not compared:
        raise ComparisonError(_nothing_comparable(folders, tables, groups))
    lines = ["# Norms across datasets", "", _sources_line(folders, tables), "", DATASETS_INTRO, ""]
    for setting in sorted(compared):
        by_dataset = compared[setting]
        lines += [f"## {code(fixed_text(setting))}", ""]
        lines += [_datasets_line(by_dataset), ""]
        lines += _differences_lines(by_dataset)
        lines += dataset_lines({d: t.scores for d, t in by_dataset.items()})
    alone = [g for s, g in sorted(groups.items()) if s not in compared]
    return "\n".join(lines + _not_compared_lines(alone, notes)).rstrip("\n") + "\n"


def read_tables(folders: Sequence[Path]) -> tuple[list[DatasetTable], list[str]]:
    """Every final-stage DP table of every folder, and notes on what was left out."""
    read = []
    keys = set(BUDGET_FIELDS)
    for folder in folders:
        records = read_records(Path(folder) / RECORDS_FILE)
        suite = load_suite(Path(folder) / SUITE_FILE)
        read.append((str(folder), records, resolve_protocol(suite, records.records)))
        for record in records.records:
            overrides = record.get("overrides")
            if isinstance(overrides, Mapping) and not is_tuning(record):
                keys.update(k for k in overrides if k != DATASET_KEY)
    tables, notes = [], []
    for folder, records, protocol in read:
        notes += [f"{folder}: {problem}" for problem in records.problems]
        collected = collect(records.records)
        notes += [f"{folder}: {problem}" for problem in collected.problems]
        for block, cells in sorted(collected.cells.items()):
            runs = [r for c in cells.values() for r in (*c.ok.values(), *c.failed_records)]
            scores = itt_scores(cells, protocol.collapse)
            if is_simulated(block):
                notes.append(f"{folder}: table {block} is a TAN simulation, not DP: left out")
            elif runs and scores:
                first = min(runs, key=lambda r: (r.get("status") != "ok", str(r["run_key"])))
                setting = _setting_of(first, sorted(keys))
                dataset = _dataset_of(first)
                tables.append(DatasetTable(folder, dataset, setting, scores, first, tuple(runs)))
    return tables, notes


def _dataset_of(record: Record) -> str:
    """The dataset a record ran on: its display name, else its ``data.source``."""
    name = record.get("dataset")
    if isinstance(name, str) and name:
        return name
    source = _config_value(record, DATASET_KEY)
    return str(source) if source is not None else "unknown dataset"


def _config_value(record: Record, key: str) -> object:
    """A dotted key's value in the record's config, or None."""
    section, _, name = key.partition(".")
    config = record.get("config")
    part = config.get(section) if isinstance(config, Mapping) else None
    return part.get(name) if isinstance(part, Mapping) else None


def _setting_of(record: Record, keys: Sequence[str]) -> Fixed:
    """Backbone and the value of each compared key: the swept value, else the budget field of
    the record, else its config's."""
    overrides = record.get("overrides")
    swept = overrides if isinstance(overrides, Mapping) else {}
    pairs: list[tuple[str, object]] = [("backbone", record["backbone"])]
    for key in keys:
        if key in swept:
            value = swept[key]
        elif record.get(BUDGET_FIELDS.get(key, "")) is not None:
            value = record[BUDGET_FIELDS[key]]
        else:
            value = _config_value(record, key)
        pairs.append((key, value))
    return tuple((k, value_key(v), grid_value_text(v)) for k, v in pairs)


def _by_setting(tables: Sequence[DatasetTable]) -> dict[Fixed, dict[str, DatasetTable]]:
    """Tables by setting, then dataset; one dataset twice at one setting is refused."""
    groups: dict[Fixed, dict[str, DatasetTable]] = {}
    for table in tables:
        group = groups.setdefault(table.setting, {})
        other = group.get(table.dataset)
        if other is not None:
            raise ComparisonError(
                f"{other.folder} and {table.folder} both hold {table.dataset} at "
                f"{fixed_text(table.setting)}: give one folder per dataset"
            )
        group[table.dataset] = table
    return groups


def _shared_norms(group: Mapping[str, DatasetTable]) -> int:
    """The most norms two of the group's datasets have in common."""
    norms = [set(t.scores) for t in group.values()]
    return max((len(a & b) for i, a in enumerate(norms) for b in norms[i + 1 :]), default=0)


def _nothing_comparable(
    folders: Sequence[Path], tables: Sequence[DatasetTable], groups: Mapping
) -> str:
    """One line: why no setting can be ranked across datasets, and what differs."""
    where = ", ".join(str(f) for f in folders)
    datasets = sorted({t.dataset for t in tables})
    if len(datasets) < 2:
        return f"nothing to rank across datasets in {where}: one dataset ({', '.join(datasets)})"
    values: dict[str, dict[str, set[tuple]]] = {}
    for table in tables:
        for key, order, text in table.setting:
            values.setdefault(key, {}).setdefault(table.dataset, set()).add((order, text))
    differ = [
        f"{key}: "
        + " vs ".join(f"{', '.join(t for _, t in sorted(v))} ({d})" for d, v in sorted(by.items()))
        for key, by in values.items()
        if len(by) < len(datasets) or not set.intersection(*by.values())
    ]
    if not differ:
        differ = ["no setting shares 2 norms with ok runs on two datasets"]
    return f"nothing comparable across datasets in {where}: " + "; ".join(differ)


def _sources_line(folders: Sequence[Path], tables: Sequence[DatasetTable]) -> str:
    """Which folders were read and which datasets each holds."""
    said = []
    for folder in folders:
        datasets = sorted({t.dataset for t in tables if t.folder == str(folder)})
        said.append(f"{code(folder)} ({', '.join(datasets) or 'no DP table'})")
    return f"Built by `python -m bench across` from the records of {', '.join(said)}."


def _datasets_line(by_dataset: Mapping[str, DatasetTable]) -> str:
    said = [f"{code(d)} ({code(t.folder)})" for d, t in sorted(by_dataset.items())]
    return f"Datasets: {', '.join(said)}."


def _differences_lines(by_dataset: Mapping[str, DatasetTable]) -> list[str]:
    """The privacy and training settings on which the datasets' configs differ; a key whose
    value differs between one table's own runs (tuned per norm) reads ``per norm``."""
    configs = {d: _table_config(t) for d, t in sorted(by_dataset.items())}
    keys = sorted({k for config in configs.values() for k in config})
    differ = [
        f"{key} ({'; '.join(f'{d}: {c.get(key, UNSET)}' for d, c in configs.items())})"
        for key in keys
        if len({c.get(key, UNSET) for c in configs.values()}) > 1
    ]
    if not differ:
        return ["The datasets' privacy and training configurations are identical.", ""]
    return [f"Besides the data, the configurations differ in: {', '.join(differ)}.", ""]


def _table_config(table: DatasetTable) -> dict[str, str]:
    """The table's flat config: each key's value, or ``per norm: ...`` when its runs differ."""
    per_norm: dict[str, dict[str, str]] = {}
    for run in table.runs:
        for key, value in _flat_config(run).items():
            per_norm.setdefault(key, {})[str(run.get("norm"))] = value
    return {
        key: next(iter(values.values()))
        if len(set(values.values())) == 1
        else "per norm: " + ", ".join(f"{norm} {v}" for norm, v in sorted(values.items()))
        for key, values in per_norm.items()
    }


def _flat_config(record: Record) -> dict[str, str]:
    config = record.get("config")
    flat = {}
    for section in _COMPARED_SECTIONS:
        part = config.get(section) if isinstance(config, Mapping) else None
        for name, value in (part or {}).items():
            flat[f"{section}.{name}"] = grid_value_text(value)
    return flat


def _not_compared_lines(alone: Sequence[Mapping[str, DatasetTable]], notes: list[str]) -> list[str]:
    """Settings on one dataset only (or sharing too few norms), and what was left out."""
    said = [
        f"- {code(fixed_text(t.setting))} on {code(d)} ({code(t.folder)})"
        for group in alone
        for d, t in sorted(group.items())
    ]
    said += [f"- {note}" for note in notes]
    if not said:
        return []
    head = (
        "Tables with no other dataset at their setting (or too few norms in common), and what "
        "the records left out:"
    )
    return ["## Not compared", "", head, "", *said, ""]
