"""Loading a suite or a record's cell: read, override, coerce, check, before any run."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.config import (
    GRID_REQUIRED,
    GRID_SECTIONS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    Cell,
    Suite,
    TuneConfig,
    primary_allowed,
    primary_mismatch,
)
from bench.data.registry import resolve_data_config
from bench.errors import ConfigError
from bench.results.record import grid_value_text
from bench.suite.checks import check_cells
from bench.suite.coercion import parse_section, reject_unknown
from bench.suite.grid import GRID_ALLOWED, canonical_spec, parse_grid, parse_tune
from bench.suite.reading import Context, apply_override, read_yaml
from norms import load_plugins

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def load_suite(path: str | Path, overrides: Sequence[str] = ()) -> Suite:
    """Read a suite file, apply ``--set`` overrides and validate everything before any run.

    Args:
        path: The YAML suite file.
        overrides: ``key.path=value`` strings; the value is parsed as YAML, so
            ``grid.seed=[0,1]`` sets a list. Applied to the raw mapping before validation.

    Returns:
        The validated suite; `Suite.cells` lists its runs.

    Raises:
        ConfigError: For anything wrong in the file or the overrides, naming the file, the key
            path, the value given, what is allowed and the closest valid name.
    """
    path = Path(path).expanduser()
    load_plugins()  # other packages' norms, before any norm in the suite is resolved
    raw = read_yaml(path)
    ctx = Context(str(path))
    for item in overrides:
        apply_override(raw, item, ctx)
    suite = _build_suite(raw, ctx, path, tuple(overrides))
    check_cells(suite, ctx)
    return suite


def reload_with_overrides(suite: Suite, overrides: Sequence[str]) -> Suite:
    """The suite re-loaded from its file with more ``--set`` overrides after its own.

    Raises:
        ConfigError: When the result is invalid, or the suite was not loaded from a file.
    """
    if suite.path is None:
        raise ConfigError("a suite built in code has no file to re-load with overrides")
    return load_suite(suite.path, (*suite.overrides, *overrides))


def load_cell(config: Mapping[str, Any], where: str, data_root: str | None = None) -> Cell:
    """The cell a record's ``config`` (`bench.config.cell_to_dict`) describes, validated as a
    suite's sections are (to evaluate a finished run's saved weights).

    Args:
        config: The record's ``config``.
        where: What errors name in place of a suite file (the records file and run key).
        data_root: Replaces ``data.root``, which a record holds only as `public_path` gives it.

    Raises:
        ConfigError: The config is not one this version of the benchmark can run.
    """
    ctx = Context(where)
    needed = (*GRID_REQUIRED, *GRID_SECTIONS)
    if not isinstance(config, Mapping) or not all(k in config for k in needed):
        raise ctx.error("config", "is missing or incomplete", allowed=", ".join(needed))
    raw = {s: dict(config[s]) for s in GRID_SECTIONS}
    if data_root is not None:
        raw["data"]["root"] = data_root
    sections = {s: parse_section(s, raw[s], ctx) for s in GRID_SECTIONS}
    return Cell(
        suite=config.get("suite", ""),
        backbone=config["backbone"],
        norm=config["norm"],
        seed=config["seed"],
        overrides=dict(config.get("overrides") or {}),
        stage=config.get("stage", "final"),
        tuned=dict(config.get("tuned") or {}),
        score_noise=config.get("score_noise"),
        **sections,
    )


_ALLOWED_FOR = {
    "name": "a lower snake_case identifier",
    "grid": GRID_ALLOWED,
}


def _build_suite(raw: dict[str, Any], ctx: Context, path: Path, overrides: tuple[str, ...]):
    reject_unknown(raw, TOP_LEVEL_KEYS, "", ctx)
    for key in ("name", "grid"):
        if key not in raw:
            raise ctx.error(key, "is required", allowed=_ALLOWED_FOR.get(key))
    name = raw["name"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ctx.error("name", "must be lower snake_case", given=name, allowed="[a-z][a-z0-9_]*")
    description = raw.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ctx.error("description", "must be a string", given=description, allowed="text")
    sections = {s: parse_section(s, raw.get(s), ctx) for s in SECTIONS}
    source = canonical_spec("dataset", sections["data"].source, "data.source", ctx)
    sections["data"] = dataclasses.replace(sections["data"], source=source)
    baseline = canonical_spec("norm", sections["report"].baseline, "report.baseline", ctx)
    sections["report"] = dataclasses.replace(sections["report"], baseline=baseline)
    sections["grid"] = parse_grid(raw["grid"], ctx)
    _check_primary(sections["report"].primary, sections["grid"], ctx)
    tune = parse_tune(raw.get("tune"), dict(sections["grid"]), sections["data"], ctx)
    if tune is not None:
        _check_tuning_divergence(tune, sections, ctx)
    return Suite(
        name,
        description,
        path=path,
        overrides=overrides,
        tune=tune,
        resolve_data=resolve_data_config,
        **sections,
    )


def _check_tuning_divergence(tune: TuneConfig, sections: Mapping[str, Any], ctx: Context) -> None:
    """Tuning runs stop on the parameters, not the private loss: the selection reads whether
    each tuning run diverged, and ``divergence_check: private_loss`` decides that from the
    un-noised loss of private batches, a release outside the accounting that would then choose
    the hyperparameters."""
    key = "training.divergence_check"
    overrides = dict(tune.overrides)
    swept = dict(sections["grid"]).get(key)
    if key in overrides:
        where, values = f"tune.overrides.{key}", [overrides[key]]
    elif swept is not None:
        where, values = f"grid.{key}", list(swept)
    else:
        where, values = key, [sections["training"].divergence_check]
    if "private_loss" in values:
        raise ctx.error(
            where,
            "is private_loss in tuning runs, but the selection reads whether each tuning run "
            "diverged, and that check reads the un-noised private loss outside the accounting",
            given="private_loss",
            allowed=f"parameters (the default), e.g. tune.overrides: {{{key}: parameters}}",
        )


def _check_primary(primary: str | None, grid: Sequence[tuple[str, Sequence]], ctx: Context):
    """``report.primary`` names one listed value of every swept key, checked before any run
    (the report would refuse it only after the sweep)."""
    if primary is None:
        return
    swept = {k: [grid_value_text(v) for v in vs] for k, vs in grid if k not in GRID_REQUIRED}
    if primary_mismatch(primary, swept):
        raise ctx.error(
            "report.primary",
            "must give one listed value of every swept grid key",
            given=primary,
            allowed=primary_allowed(swept),
        )
