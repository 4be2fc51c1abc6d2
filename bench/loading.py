"""Reads a suite file and ``--set`` overrides and validates them into bench.config dataclasses."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from bench.backbones import create_backbone, resolve_backbone
from bench.config import (
    GRID_REQUIRED,
    GRID_SECTIONS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    Cell,
    DataConfig,
    Suite,
    TuneConfig,
)
from bench.errors import BackboneError, BenchError, ConfigError, IncompatibleError
from bench.plan import data_size, grad_sample_mode_problem
from norms import load_plugins, resolve_norm
from norms.errors import NormError

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
    raw = _read_yaml(path)
    ctx = _Context(str(path))
    for item in overrides:
        _apply_override(raw, item, ctx)
    suite = _build_suite(raw, ctx, path, tuple(overrides))
    _check_cells(suite, ctx)
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
    ctx = _Context(where)
    needed = (*GRID_REQUIRED, *GRID_SECTIONS)
    if not isinstance(config, Mapping) or not all(k in config for k in needed):
        raise ctx.error("config", "is missing or incomplete", allowed=", ".join(needed))
    raw = {s: dict(config[s]) for s in GRID_SECTIONS}
    if data_root is not None:
        raw["data"]["root"] = data_root
    sections = {s: _parse_section(s, raw[s], ctx) for s in GRID_SECTIONS}
    return Cell(
        suite=config.get("suite", ""),
        backbone=config["backbone"],
        norm=config["norm"],
        seed=config["seed"],
        overrides=dict(config.get("overrides") or {}),
        stage=config.get("stage", "final"),
        tuned=dict(config.get("tuned") or {}),
        **sections,
    )


# --- reading and overriding -------------------------------------------------------------------


@dataclass
class _Context:
    """Where errors come from: the file, and the key paths set from the command line."""

    file: str
    from_set: set[str] = field(default_factory=set)

    def error(
        self,
        key: str | None,
        message: str,
        *,
        given: object = None,
        allowed: str | None = None,
        choices: Sequence[str] | None = None,
    ) -> ConfigError:
        if key is not None and any(
            key == p or key.startswith((p + ".", p + "[")) for p in self.from_set
        ):
            key += " (from --set)"
        return ConfigError(
            message, file=self.file, key=key, given=given, allowed=allowed, choices=choices
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(
            "no such suite file",
            file=str(path),
            given=path.name,
            allowed=", ".join(near) or None,
            choices=near,
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"YAML syntax error{where}: {problem}", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the suite file: {err}", file=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "the top level of a suite must be a mapping",
            file=str(path),
            given=type(raw).__name__,
            allowed="keys " + ", ".join(TOP_LEVEL_KEYS),
        )
    return copy.deepcopy(raw)


def _apply_override(raw: dict[str, Any], item: str, ctx: _Context) -> None:
    """Set ``key.path=value`` in the raw mapping; a grid key keeps its dots (``training.lr``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            "an override must look like key.path=value",
            file=ctx.file,
            key="--set",
            given=item,
            allowed="e.g. training.steps=100 or grid.seed=[0,1]",
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ctx.error(
            key, f"cannot parse the value as YAML: {getattr(err, 'problem', err)}", given=text
        ) from None
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 2:
        parts = ["grid", ".".join(parts[1:])]
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ctx.error(
                ".".join(parts[: depth + 1]),
                "is not a section, so it has no keys to set",
                given=item,
            )
        node = child
    node[parts[-1]] = value
    ctx.from_set.add(".".join(parts))


# --- validation -------------------------------------------------------------------------------


def _build_suite(raw: dict[str, Any], ctx: _Context, path: Path, overrides: tuple[str, ...]):
    _reject_unknown(raw, TOP_LEVEL_KEYS, "", ctx)
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
    sections = {s: _parse_section(s, raw.get(s), ctx) for s in SECTIONS}
    baseline = _canonical_spec("norm", sections["report"].baseline, "report.baseline", ctx)
    sections["report"] = dataclasses.replace(sections["report"], baseline=baseline)
    grid = _parse_grid(raw["grid"], ctx)
    tune = _parse_tune(raw.get("tune"), dict(grid), sections["data"], ctx)
    return Suite(
        name=name,
        description=description,
        grid=grid,
        path=path,
        overrides=overrides,
        tune=tune,
        **sections,
    )


_TUNE_KEYS = ("keys", "seeds", "overrides")


def _parse_tune(raw: Any, grid: Mapping[str, Any], data: Any, ctx: _Context) -> TuneConfig | None:
    """The ``tune`` section: dotted keys with the values to try, tuning seeds, and overrides
    applied to tuning runs only (a shorter budget)."""
    if raw is None:
        return None
    allowed = "keys: {training.lr: [0.5, 1, 2]}, seeds: [0, 1], overrides: {training.steps: 40}"
    if not isinstance(raw, dict):
        raise ctx.error("tune", "must be a mapping", given=raw, allowed=allowed)
    _reject_unknown(raw, _TUNE_KEYS, "tune.", ctx)
    keys = raw.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ctx.error(
            "tune.keys", "must map dotted keys to values to try", given=keys, allowed=allowed
        )
    parsed = []
    for key in sorted(keys):
        if key in GRID_REQUIRED or key in grid:
            raise ctx.error(
                f"tune.keys.{key}",
                "is swept by the grid or names a grid axis; a key is either tuned or swept",
                given=key,
                allowed="a dotted data/privacy/training key the grid does not sweep",
            )
        values = keys[key] if isinstance(keys[key], list) else [keys[key]]
        parsed.append((key, _parse_grid_values(key, values, ctx, where="tune.keys")))
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ctx.error(
            "tune.seeds", "must be a list of distinct seeds", given=seeds, allowed="e.g. [0, 1]"
        )
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ctx.error("tune.overrides", "must be a mapping", given=overrides, allowed=allowed)
    parsed_overrides = []
    for key in sorted(overrides):
        (value,) = _parse_grid_values(key, [overrides[key]], ctx, where="tune.overrides")
        parsed_overrides.append((key, value))
    if data.val_split < 1:
        raise ctx.error(
            "data.val_split",
            "is 0, but tuning needs a validation split (the test set is never read to tune)",
            given=data.val_split,
            allowed="data.val_split > 0 examples held out of the private set",
        )
    return TuneConfig(tuple(parsed), tuple(seeds), tuple(parsed_overrides))


_ALLOWED_FOR = {
    "name": "a lower snake_case identifier",
    "grid": "a mapping with backbone, norm and seed",
}


def _reject_unknown(raw: Mapping[str, Any], valid: Sequence[str], prefix: str, ctx: _Context):
    for key in raw:
        if key not in valid:
            path = f"{prefix}{key}"
            raise ctx.error(
                path,
                "unknown key",
                given=key,
                allowed=", ".join(valid),
                choices=[str(v) for v in valid],
            )


def _parse_section(section: str, raw: Any, ctx: _Context):
    cls = SECTIONS[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.error(section, "must be a mapping", given=raw, allowed="key: value pairs")
    names = [f.name for f in dataclasses.fields(cls)]
    _reject_unknown(raw, names, f"{section}.", ctx)
    hints = _hints(cls)
    values = {k: _coerce(v, hints[k], f"{section}.{k}", ctx) for k, v in raw.items()}
    config = cls(**values)
    for name, message, allowed in config.problems():
        raise ctx.error(f"{section}.{name}", message, given=getattr(config, name), allowed=allowed)
    return config


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str, ctx: _Context) -> Any:
    """Check ``value`` against a field's annotation; convert ints and numeric strings to float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, ctx)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise ctx.error(key, "is not allowed", given=value, allowed=", ".join(args), choices=args)
    if origin is tuple:
        fixed = not (len(args) == 2 and args[1] is Ellipsis)
        if not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
            want = f"a list of {len(args)} numbers" if fixed else "a list of numbers"
            raise ctx.error(key, f"must be {want}", given=value, allowed=want)
        item_hints = args if fixed else [args[0]] * len(value)
        return tuple(
            _coerce(v, h, f"{key}[{i}]", ctx)
            for i, (v, h) in enumerate(zip(value, item_hints, strict=True))
        )
    if dataclasses.is_dataclass(hint):
        return _coerce_nested(value, hint, key, ctx)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ctx.error(key, "must be true or false", given=value, allowed="true, false")
    if hint is int:
        # bool is an int subclass in Python; `true` for a count is a typo, not a 1.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ctx.error(key, "must be an integer", given=value, allowed="an integer")
    if hint is float:
        number = _as_float(value)
        if number is None:
            raise ctx.error(key, "must be a finite number", given=value, allowed="a number")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ctx.error(key, "must be a string", given=value, allowed="text")
    raise TypeError(f"bench.loading cannot check fields annotated {hint!r}")  # a bug, not input


def _coerce_nested(value: Any, cls: type, key: str, ctx: _Context) -> Any:
    """A mapping for a nested config (``training.pre_prune: {rate: 0.5}``), checked key by key
    and by the nested config's own ``problems``."""
    fields = [f for f in dataclasses.fields(cls)]
    names = [f.name for f in fields]
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if not isinstance(value, dict):
        form = "{" + ", ".join(f"{n}: ..." for n in names) + "}"
        raise ctx.error(key, "must be a mapping, or null", given=value, allowed=form)
    _reject_unknown(value, names, f"{key}.", ctx)
    for name in required:
        if name not in value:
            raise ctx.error(f"{key}.{name}", "is required", allowed=", ".join(names))
    hints = _hints(cls)
    config = cls(**{k: _coerce(v, hints[k], f"{key}.{k}", ctx) for k, v in value.items()})
    for name, message, allowed in config.problems():
        raise ctx.error(f"{key}.{name}", message, given=getattr(config, name), allowed=allowed)
    return config


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads `1e-5` (no dot) as a string; accept it as a number.
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _parse_grid(raw: Any, ctx: _Context) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, dict):
        raise ctx.error("grid", "must be a mapping", given=raw, allowed=_ALLOWED_FOR["grid"])
    for key in GRID_REQUIRED:
        if key not in raw:
            raise ctx.error(f"grid.{key}", "is required", allowed="a value or a list of values")
    extras = sorted(k for k in raw if k not in GRID_REQUIRED)
    grid = []
    for key in (*GRID_REQUIRED, *extras):
        grid.append((key, _parse_grid_values(str(key), raw[key], ctx)))
    return tuple(grid)


def _parse_grid_values(key: str, raw: Any, ctx: _Context, where: str = "grid") -> tuple[Any, ...]:
    gkey = f"{where}.{key}"
    hint: Any = None
    if key not in GRID_REQUIRED:
        section, _, name = key.partition(".")
        if section not in GRID_SECTIONS or not name:
            valid = [*GRID_REQUIRED, *(f"{s}.<field>" for s in GRID_SECTIONS)]
            raise ctx.error(
                gkey,
                "unknown grid key",
                given=key,
                allowed=", ".join(valid),
                choices=[*GRID_REQUIRED, *GRID_SECTIONS],
            )
        fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if name not in fields:
            raise ctx.error(
                gkey, "unknown key", given=name, allowed=", ".join(fields), choices=fields
            )
        hint = _hints(SECTIONS[section])[name]
    # A list sweeps; for list-valued fields (data.mean) only a list of lists sweeps.
    list_field = hint is not None and _is_tuple_hint(hint)
    swept = isinstance(raw, list) and (not list_field or all(isinstance(v, list) for v in raw))
    items = raw if swept else [raw]
    if not items:
        raise ctx.error(
            gkey,
            "is an empty list, so the grid has no cells",
            given=raw,
            allowed="at least one value",
        )
    values: list[Any] = []
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        ikey = f"{gkey}[{i}]" if swept else gkey
        if key == "backbone":
            value = _canonical_spec("backbone", item, ikey, ctx)
        elif key == "norm":
            value = _canonical_spec("norm", item, ikey, ctx)
        elif key == "seed":
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise ctx.error(
                    ikey, "must be a non-negative integer", given=item, allowed="an integer >= 0"
                )
            value = item
        else:
            value = _coerce(item, hint, ikey, ctx)
        if value in seen:
            raise ctx.error(
                ikey,
                f"duplicate cells: it means {value!r}, as {gkey}[{seen[value]}] does",
                given=item,
                allowed="distinct values",
            )
        seen[value] = i
        values.append(value)
    return tuple(values)


def _is_tuple_hint(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_tuple_hint(a) for a in typing.get_args(hint))
    return typing.get_origin(hint) is tuple


#: What a spec string names, how to resolve it, its errors and an example of the form.
_SPEC_KINDS = {
    "norm": (resolve_norm, NormError, "e.g. group_norm or group_norm[num_groups=8]"),
    "backbone": (resolve_backbone, BackboneError, "e.g. wrn16_4 or wrn16_4[width=0.5]"),
}


def _canonical_spec(kind: str, spec: Any, key: str, ctx: _Context) -> str:
    """The canonical spec string of a norm or backbone, or an error naming file and key."""
    resolve, error, example = _SPEC_KINDS[kind]
    if not isinstance(spec, str):
        raise ctx.error(key, f"must be a {kind} spec string", given=spec, allowed=example)
    try:
        return str(resolve(spec))
    except error as err:
        raise ctx.error(key, str(err), given=spec) from None


def _check_cells(suite: Suite, ctx: _Context) -> None:
    """Checks that need the grid point: value ranges after grid overrides, sizes, public data."""

    grid = dict(suite.grid)
    norm_index = dict(zip(suite.grid[1][1], range(len(suite.grid[1][1])), strict=True))
    norm_key = "grid.norm" if len(grid["norm"]) == 1 else None
    sizes: dict[DataConfig, int] = {}
    checked: set[tuple[Any, ...]] = set()
    for cell in suite.cells():

        def where(section: str, name: str, cell: Cell = cell) -> str:
            dotted = f"{section}.{name}"
            if dotted not in cell.overrides:
                return dotted
            values = grid[dotted]
            index = values.index(cell.overrides[dotted])
            return f"grid.{dotted}[{index}]" if len(values) > 1 else f"grid.{dotted}"

        configs = (cell.data, cell.privacy, cell.training)
        if configs not in checked:
            checked.add(configs)
            for section, config in zip(GRID_SECTIONS, configs, strict=True):
                for name, message, allowed in config.problems():
                    raise ctx.error(
                        where(section, name), message, given=getattr(config, name), allowed=allowed
                    )
            if cell.data not in sizes:
                sizes[cell.data] = _train_examples(cell.data, where, ctx)
            _check_sizes(cell, sizes[cell.data], where, ctx)
        if cell.data.public_split == 0 and resolve_norm(cell.norm).needs_public_data:
            key = norm_key or f"grid.norm[{norm_index[cell.norm]}]"
            raise ctx.error(
                key,
                "needs public data but data.public_split is 0",
                given=cell.norm,
                allowed="data.public_split > 0 (examples held out of the private set)",
            )
        for name, public_method in (("pre_prune", "snip_public"), ("grad_drop", "public")):
            option = getattr(cell.training, name)
            if (
                cell.data.public_split == 0
                and option is not None
                and option.method == public_method
            ):
                raise ctx.error(
                    f"{where('training', name)}.method",
                    "reads public data but data.public_split is 0",
                    given=public_method,
                    allowed="data.public_split > 0, or a method that reads no data",
                )
        mode_problem = grad_sample_mode_problem(cell.norm, cell.training.grad_sample_mode)
        if mode_problem:
            raise ctx.error(
                where("training", "grad_sample_mode"),
                mode_problem[0],
                given=cell.training.grad_sample_mode,
                allowed=mode_problem[1],
            )
    _check_builds(suite, norm_key or "grid.norm[{}]", norm_index, ctx)


def _check_builds(suite: Suite, key_form: str, norm_index: Mapping[str, int], ctx: _Context):
    """Build every (backbone, norm) pair of the grid, on the meta device (no memory, no
    compute), so that a norm parameter the norm refuses at some channel count the backbone
    asks for (``group_norm[num_groups=7]``, a dropout of 2) is refused now, with
    its key, rather than in every run."""

    grid = dict(suite.grid)
    for backbone in grid["backbone"]:
        for norm in grid["norm"]:
            try:
                with torch.device("meta"):
                    create_backbone(backbone, norm=norm)
            except IncompatibleError:
                continue  # a refused pair runs as a skip with its reason
            except (NormError, ValueError) as err:
                raise ctx.error(
                    key_form.format(norm_index[norm]),
                    f"{backbone} cannot build this norm: {err}",
                    given=norm,
                    allowed="values the norm accepts at every channel count of the backbone",
                ) from None


def _train_examples(data: DataConfig, where, ctx: _Context) -> int:
    """Training examples (public split included); checks that the data directory exists."""
    must_exist = data.source == "imagefolder" or (data.source == "cifar10" and not data.download)
    if data.root is not None and must_exist and not os.path.isdir(data.root):
        hint = "an existing directory"
        if data.source == "cifar10":
            hint += ", or download: true"
        raise ctx.error(
            where("data", "root"), "directory does not exist", given=data.root, allowed=hint
        )
    try:
        return data_size(data).n_train
    except BenchError as err:
        raise ctx.error(where("data", "root"), str(err), given=data.root) from None


def _check_sizes(cell: Cell, n_train: int, where, ctx: _Context) -> None:
    data, privacy, training = cell.data, cell.privacy, cell.training
    if data.public_split >= n_train:
        raise ctx.error(
            where("data", "public_split"),
            f"leaves no private training data ({n_train} training examples)",
            given=data.public_split,
            allowed=f"0 <= public_split < {n_train}",
        )
    n_private = n_train - data.public_split
    if data.val_split and data.val_split >= n_private - training.batch_size:
        raise ctx.error(
            where("data", "val_split"),
            f"leaves fewer tuning examples than one batch ({n_private} private examples, "
            f"batch {training.batch_size})",
            given=data.val_split,
            allowed=f"0 <= val_split < {n_private - training.batch_size}",
        )
    b = privacy.simulate_batch_size
    if b is not None and b > training.batch_size:
        raise ctx.error(
            where("privacy", "simulate_batch_size"),
            f"is larger than the batch it simulates ({training.batch_size}); a TAN simulation "
            "runs a smaller batch",
            given=b,
            allowed=f"1 <= simulate_batch_size <= {training.batch_size}",
        )
    if privacy.delta >= 1 / n_private:
        raise ctx.error(
            where("privacy", "delta"),
            f"must be below 1/N = {1 / n_private:.3g} for N = {n_private} private examples",
            given=privacy.delta,
            allowed=f"0 < delta < {1 / n_private:.3g}",
        )
    if training.batch_size > n_private:
        raise ctx.error(
            where("training", "batch_size"),
            f"is larger than the {n_private} private training examples",
            given=training.batch_size,
            allowed=f"1 <= batch_size <= {n_private}",
        )
    steps = training.num_steps(n_private)
    if training.warmup_steps >= steps:
        raise ctx.error(
            where("training", "warmup_steps"),
            f"is not shorter than the run ({steps} steps)",
            given=training.warmup_steps,
            allowed=f"0 <= warmup_steps < {steps}",
        )
