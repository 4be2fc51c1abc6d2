"""Suites as data: load a YAML suite, apply ``--set`` overrides, validate it into frozen configs."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from bench.errors import BenchError, ConfigError

#: The top-level keys of a suite file; ``name`` and ``grid`` are required.
TOP_LEVEL_KEYS = ("name", "description", "data", "privacy", "training", "grid", "report")
#: Grid keys every suite sweeps; any other grid key is a dotted path such as ``training.lr``.
GRID_REQUIRED = ("backbone", "norm", "seed")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Fields that say where files live or how a dataset is labelled, not what is computed: moving the
# cache or relabelling the dataset must not invalidate finished runs.
_NOT_IN_RUN_KEY = ("cache_dir", "download", "dataset")

Problem = tuple[str, str, str]  # (field, what is wrong, what is allowed)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are split and how they are standardised.

    Attributes:
        source: ``synthetic`` (generated, learnable), ``cifar10`` (torchvision) or
            ``imagefolder`` (``root/train/<class>/*`` and ``root/test/<class>/*``).
        root: Data directory; required for ``cifar10`` and ``imagefolder``. ``~`` is expanded.
        download: Let torchvision download CIFAR-10 into ``root`` when it is missing.
        dataset: Human name for reports; None gives ``synthetic``, ``CIFAR-10`` or the basename
            of an imagefolder root.
        num_train: Training examples, public split included: the size of the synthetic set
            (None: 2048), a cap for the other sources taken as a deterministic subset
            (None: all).
        num_test: Test examples: the synthetic size (None: 512) or a cap (None: all).
        num_classes: Classes of the synthetic set (ignored by the other sources).
        image_size: Side of the synthetic images in pixels (ignored by the other sources).
        public_split: Training examples held out as public data: excluded from the private
            training set and read only by norms that need public data
            (``dp_batch_norm[stats=public]``).
        split_seed: Fixes the public split, any subset and the synthetic images; independent of
            the run seeds so that every norm and seed sees the same data.
        normalize: Standardise inputs with ``mean`` and ``std`` after scaling to [0, 1].
        mean: Per-channel mean of the [0, 1] inputs (CIFAR-10's by default).
        std: Per-channel standard deviation of the [0, 1] inputs (CIFAR-10's by default).
        cache_dir: Where decoded imagefolder tensors are cached; None disables the cache.
    """

    source: Literal["synthetic", "cifar10", "imagefolder"] = "synthetic"
    root: str | None = None
    download: bool = False
    dataset: str | None = None
    num_train: int | None = None
    num_test: int | None = None
    num_classes: int = 10
    image_size: int = 32
    public_split: int = 0
    split_seed: int = 0
    normalize: bool = True
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    cache_dir: str | None = "~/.cache/dp-norm-bench"

    SYNTHETIC_NUM_TRAIN: ClassVar[int] = 2048
    SYNTHETIC_NUM_TEST: ClassVar[int] = 512

    def __post_init__(self) -> None:
        # Expanded once here so that file access, records and run keys all see the same path.
        for name in ("root", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, os.path.expanduser(value))

    @property
    def dataset_name(self) -> str:
        """The human name of the data for reports."""
        if self.dataset:
            return self.dataset
        if self.source == "imagefolder" and self.root:
            return os.path.basename(os.path.normpath(self.root))
        return {"synthetic": "synthetic", "cifar10": "CIFAR-10"}.get(self.source, self.source)

    @property
    def train_size(self) -> int | None:
        """Training examples before the public split is taken out; None means all there are."""
        if self.num_train is None and self.source == "synthetic":
            return self.SYNTHETIC_NUM_TRAIN
        return self.num_train

    @property
    def test_size(self) -> int | None:
        """Test examples; None means all there are."""
        if self.num_test is None and self.source == "synthetic":
            return self.SYNTHETIC_NUM_TEST
        return self.num_test

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        if self.root is None and self.source != "synthetic":
            yield "root", f"is required for source {self.source!r}", "a directory path"
        for name in ("num_train", "num_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                yield name, "must be positive", "an integer >= 1, or null"
        if self.num_classes < 2:
            yield "num_classes", "must be at least 2", "an integer >= 2"
        if self.image_size < 8:
            yield "image_size", "is too small for a ResNet", "an integer >= 8"
        if self.public_split < 0:
            yield "public_split", "must not be negative", "an integer >= 0"
        if self.split_seed < 0:
            yield "split_seed", "must not be negative", "an integer >= 0"
        if any(s <= 0 for s in self.std):
            yield "std", "must be positive", "three numbers > 0"


@dataclass(frozen=True)
class PrivacyConfig:
    """The (epsilon, delta) target of every run and the per-example clipping bound.

    Attributes:
        epsilon: Target epsilon; the noise multiplier is calibrated so that the run spends it.
        delta: Target delta; must be below 1/N (N private training examples), since a larger
            delta allows mechanisms that publish a whole example.
        accountant: ``prv`` (tight, the default) or ``rdp``; the other is reported too.
        max_grad_norm: Per-example gradient clipping bound C.
    """

    epsilon: float = 8.0
    delta: float = 1e-5
    accountant: Literal["prv", "rdp"] = "prv"
    max_grad_norm: float = 1.0

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        if self.epsilon <= 0:
            yield "epsilon", "must be positive", "a number > 0"
        if not 0 < self.delta < 1:
            yield "delta", "must be in (0, 1)", "0 < delta < 1/N"
        if self.max_grad_norm <= 0:
            yield "max_grad_norm", "must be positive", "a number > 0"


@dataclass(frozen=True)
class TrainingConfig:
    """The DP-SGD recipe: sampling, optimiser, schedule, augmentation and measurement.

    Attributes:
        batch_size: Expected logical batch size B; each example is included independently with
            probability q = B/N, so the actual size varies from step to step.
        max_physical_batch: Most examples (each with its ``augmult`` views) in one forward and
            backward pass; bounds memory without changing the maths.
        steps: Number of DP-SGD steps; exactly one of ``steps`` and ``epochs`` is set.
        epochs: Length in expected passes over the private set: ``ceil(epochs * N / B)`` steps.
        optimizer: ``sgd`` or ``adam``.
        lr: Peak learning rate.
        momentum: SGD momentum (0 in De et al.'s recipe).
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 weight decay applied by the optimiser.
        lr_schedule: ``constant``, ``cosine`` (to 0 at the last step) or ``step`` (multiply by
            ``lr_gamma`` at each milestone).
        lr_milestones: Fractions of the run, in (0, 1) and increasing, where ``step`` decays.
        lr_gamma: Factor applied at each ``step`` milestone.
        warmup_steps: Linear warm-up from 0 to ``lr`` over this many steps.
        augment: Reflect-pad, random crop and random horizontal flip on the device.
        crop_padding: Pixels of reflect padding before the random crop.
        augmult: Augmentation multiplicity K: views per example whose losses are averaged
            before the per-example gradient is taken, so they share one clipped gradient.
        ema: Decay of the exponential moving average of the weights evaluated at the end
            (warm-up ``min(ema, (1 + t) / (10 + t))``); None evaluates the raw weights.
        precision: ``fp32`` or ``bf16`` autocast for forward and backward.
        grad_sample_mode: How per-sample gradients are clipped: ``hooks`` and ``functorch`` (Opacus'
            per-sample-gradient paths) or ``bk`` (this project's book-keeping clipper, one backward
            pass; see ``bench/bk.py``).
        eval_batch_size: Batch size for test-set evaluation.
        throughput_warmup_steps: Steps run before throughput is timed (excluded).
        throughput_steps: Steps timed for the steady-state throughput.
        measure_nonprivate: Also time the same model without DP for the DP/non-DP ratio.
        max_loss: A training loss above this, or not finite, marks the run as diverged.
    """

    batch_size: int = 256
    max_physical_batch: int = 128
    steps: int | None = None
    epochs: float | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.5
    warmup_steps: int = 0
    augment: bool = True
    crop_padding: int = 4
    augmult: int = 1
    ema: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_sample_mode: Literal["hooks", "functorch", "bk"] = "bk"
    eval_batch_size: int = 1024
    throughput_warmup_steps: int = 2
    throughput_steps: int = 5
    measure_nonprivate: bool = True
    max_loss: float = 1e4

    def num_steps(self, n_private: int) -> int:
        """The number of DP-SGD steps for a private training set of ``n_private`` examples."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            raise ConfigError("one of training.steps and training.epochs must be set")
        return math.ceil(self.epochs * n_private / self.batch_size)

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        yield from _at_least(self, ("batch_size", "max_physical_batch", "eval_batch_size"), 1)
        yield from _at_least(self, ("throughput_steps", "augmult"), 1)
        yield from _at_least(self, ("warmup_steps", "crop_padding", "throughput_warmup_steps"), 0)
        if (self.steps is None) == (self.epochs is None):
            which = "both are set" if self.steps is not None else "neither is set"
            yield (
                "steps",
                f"exactly one of steps and epochs must be set, {which}",
                ("steps: <int> or epochs: <number>"),
            )
        if self.steps is not None and self.steps < 1:
            yield "steps", "must be positive", "an integer >= 1"
        if self.epochs is not None and self.epochs <= 0:
            yield "epochs", "must be positive", "a number > 0"
        if self.lr <= 0:
            yield "lr", "must be positive", "a number > 0"
        if not 0 <= self.momentum < 1:
            yield "momentum", "must be in [0, 1)", "0 <= momentum < 1"
        if self.nesterov and (self.momentum == 0 or self.optimizer != "sgd"):
            yield "nesterov", "needs optimizer sgd with momentum > 0", "false, or momentum > 0"
        if self.weight_decay < 0:
            yield "weight_decay", "must not be negative", "a number >= 0"
        if self.lr_schedule == "step" and not self.lr_milestones:
            yield "lr_milestones", "lr_schedule 'step' needs milestones", "fractions in (0, 1)"
        if self.lr_milestones and self.lr_schedule != "step":
            yield "lr_milestones", "are only used by lr_schedule 'step'", "[] or lr_schedule: step"
        ms = self.lr_milestones
        if any(not 0 < m < 1 for m in ms) or any(a >= b for a, b in itertools.pairwise(ms)):
            yield "lr_milestones", "must be increasing fractions of the run", "fractions in (0, 1)"
        if self.lr_gamma <= 0:
            yield "lr_gamma", "must be positive", "a number > 0"
        if self.augmult > 1 and not self.augment:
            yield (
                "augmult",
                "views of an example are identical without augment",
                ("1 when augment is false"),
            )
        if self.ema is not None and not 0 < self.ema < 1:
            yield "ema", "must be in (0, 1)", "a decay in (0, 1), or null"
        if self.max_loss <= 0:
            yield "max_loss", "must be positive", "a number > 0"


@dataclass(frozen=True)
class ReportConfig:
    """How the leaderboard compares the norms.

    Attributes:
        baseline: Norm spec every other norm is compared with.
        alpha: Family-wise significance level (Holm-corrected).
    """

    baseline: str = "group_norm"
    alpha: float = 0.05

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        if not 0 < self.alpha < 0.5:
            yield "alpha", "must be in (0, 0.5)", "0 < alpha < 0.5"


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "privacy": PrivacyConfig,
    "training": TrainingConfig,
    "report": ReportConfig,
}
# Sections a grid key may sweep (the report does not change a run).
_GRID_SECTIONS = ("data", "privacy", "training")


@dataclass(frozen=True)
class Cell:
    """One run of a suite: a point of the grid with every config resolved.

    Attributes:
        suite: Name of the suite the cell belongs to.
        backbone: Canonical backbone spec string, e.g. ``wrn16_4[width=0.5]``.
        norm: Canonical norm spec string, e.g. ``group_norm[num_groups=8]``.
        seed: Run seed: model initialisation, sampling and augmentation.
        overrides: The extra grid keys (dotted paths) and their values in this cell.
        data: Data config with the cell's overrides applied.
        privacy: Privacy config with the cell's overrides applied.
        training: Training config with the cell's overrides applied.
    """

    suite: str
    backbone: str
    norm: str
    seed: int
    overrides: Mapping[str, Any] = field(hash=False)
    data: DataConfig
    privacy: PrivacyConfig
    training: TrainingConfig

    @property
    def run_key(self) -> str:
        """First 16 hex digits of the SHA-256 of everything that changes the run's result.

        The suite's name, description and report settings are left out, so renaming a suite or
        rewording it keeps finished runs.
        """
        data = _data_to_dict(self.data)
        for name in _NOT_IN_RUN_KEY:
            data.pop(name)
        if self.data.source == "cifar10":
            data.pop("root")  # CIFAR-10 is the same wherever it is stored; a folder is not
        payload = {
            "backbone": self.backbone,
            "norm": self.norm,
            "seed": self.seed,
            "data": data,
            "privacy": dataclasses.asdict(self.privacy),
            "training": dataclasses.asdict(self.training),
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Suite:
    """A validated suite: the shared configs and the grid swept over them.

    Attributes:
        name: Lower snake_case identifier used in paths, records and reports.
        description: Free text for the report header.
        data: Data config shared by all cells (before grid overrides).
        privacy: Privacy config shared by all cells (before grid overrides).
        training: Training config shared by all cells (before grid overrides).
        grid: ``(key, values)`` pairs in sweep order: backbone, norm, seed, then the extra
            dotted keys sorted; backbone and norm values are canonical spec strings.
        report: Leaderboard settings.
        path: The suite file it was loaded from.
        overrides: The ``--set`` strings applied on top of the file.
    """

    name: str
    description: str
    data: DataConfig
    privacy: PrivacyConfig
    training: TrainingConfig
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    report: ReportConfig
    path: Path | None = None
    overrides: tuple[str, ...] = ()

    def cells(self) -> list[Cell]:
        """The cartesian product of the grid, backbone outermost, extra keys innermost."""
        keys = [key for key, _ in self.grid]
        cells = []
        for combo in itertools.product(*(values for _, values in self.grid)):
            point = dict(zip(keys, combo, strict=True))
            extras = {k: v for k, v in point.items() if k not in GRID_REQUIRED}
            sections = {s: getattr(self, s) for s in _GRID_SECTIONS}
            for section in _GRID_SECTIONS:
                changes = {
                    k.partition(".")[2]: v
                    for k, v in extras.items()
                    if k.partition(".")[0] == section
                }
                if changes:
                    sections[section] = dataclasses.replace(sections[section], **changes)
            cells.append(
                Cell(
                    suite=self.name,
                    backbone=point["backbone"],
                    norm=point["norm"],
                    seed=point["seed"],
                    overrides=extras,
                    **sections,
                )
            )
        return cells

    def with_overrides(self, overrides: Sequence[str]) -> Suite:
        """This suite re-loaded from its file with more ``--set`` overrides after its own.

        Raises:
            ConfigError: When the result is invalid, or the suite was not loaded from a file.
        """
        if self.path is None:
            raise ConfigError("a suite built in code has no file to re-load with overrides")
        return load_suite(self.path, (*self.overrides, *overrides))


def suite_to_dict(suite: Suite) -> dict[str, Any]:
    """A JSON-ready description of the suite, as written to ``suite.json``."""
    return {
        "name": suite.name,
        "description": suite.description,
        "path": None if suite.path is None else str(suite.path),
        "overrides": list(suite.overrides),
        "data": _data_to_dict(suite.data),
        "privacy": dataclasses.asdict(suite.privacy),
        "training": _jsonable(dataclasses.asdict(suite.training)),
        "grid": {key: _jsonable(list(values)) for key, values in suite.grid},
        "report": dataclasses.asdict(suite.report),
    }


def cell_to_dict(cell: Cell) -> dict[str, Any]:
    """A JSON-ready description of one cell, as stored in its record."""
    return {
        "run_key": cell.run_key,
        "suite": cell.suite,
        "backbone": cell.backbone,
        "norm": cell.norm,
        "seed": cell.seed,
        "overrides": _jsonable(dict(cell.overrides)),
        "data": _data_to_dict(cell.data),
        "privacy": dataclasses.asdict(cell.privacy),
        "training": _jsonable(dataclasses.asdict(cell.training)),
    }


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
    raw = _read_yaml(path)
    ctx = _Context(str(path))
    for item in overrides:
        _apply_override(raw, item, ctx)
    suite = _build_suite(raw, ctx, path, tuple(overrides))
    _check_cells(suite, ctx)
    return suite


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
    sections = {s: _parse_section(s, raw.get(s), ctx) for s in _SECTIONS}
    baseline = _canonical_norm(sections["report"].baseline, "report.baseline", ctx)
    sections["report"] = dataclasses.replace(sections["report"], baseline=baseline)
    grid = _parse_grid(raw["grid"], ctx)
    return Suite(
        name=name, description=description, grid=grid, path=path, overrides=overrides, **sections
    )


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
    cls = _SECTIONS[section]
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
    raise TypeError(f"bench.config cannot check fields annotated {hint!r}")  # a bug, not input


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


def _parse_grid_values(key: str, raw: Any, ctx: _Context) -> tuple[Any, ...]:
    gkey = f"grid.{key}"
    hint: Any = None
    if key not in GRID_REQUIRED:
        section, _, name = key.partition(".")
        if section not in _GRID_SECTIONS or not name:
            valid = [*GRID_REQUIRED, *(f"{s}.<field>" for s in _GRID_SECTIONS)]
            raise ctx.error(
                gkey,
                "unknown grid key",
                given=key,
                allowed=", ".join(valid),
                choices=[*GRID_REQUIRED, *_GRID_SECTIONS],
            )
        fields = [f.name for f in dataclasses.fields(_SECTIONS[section])]
        if name not in fields:
            raise ctx.error(
                gkey, "unknown key", given=name, allowed=", ".join(fields), choices=fields
            )
        hint = _hints(_SECTIONS[section])[name]
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
            value = _canonical_backbone(item, ikey, ctx)
        elif key == "norm":
            value = _canonical_norm(item, ikey, ctx)
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


def _canonical_norm(spec: Any, key: str, ctx: _Context) -> str:
    # Imported here: the norms registry pulls in torch, which torch-free readers of
    # `Suite`/`Cell` (the report) do not need.
    from norms import resolve_norm
    from norms.errors import NormError

    if not isinstance(spec, str):
        raise ctx.error(
            key,
            "must be a norm spec string",
            given=spec,
            allowed="e.g. group_norm or group_norm[num_groups=8]",
        )
    try:
        return str(resolve_norm(spec))
    except NormError as err:
        raise ctx.error(key, str(err), given=spec) from None


def _canonical_backbone(spec: Any, key: str, ctx: _Context) -> str:
    from bench.backbones import resolve_backbone  # torch-heavy; see _canonical_norm
    from bench.errors import BackboneError

    if not isinstance(spec, str):
        raise ctx.error(
            key,
            "must be a backbone spec string",
            given=spec,
            allowed="e.g. wrn16_4 or wrn16_4[width=0.5]",
        )
    try:
        return str(resolve_backbone(spec))
    except BackboneError as err:
        raise ctx.error(key, str(err), given=spec) from None


def _check_cells(suite: Suite, ctx: _Context) -> None:
    """Checks that need the grid point: value ranges after grid overrides, sizes, public data."""
    from norms import resolve_norm

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
            for section, config in zip(_GRID_SECTIONS, configs, strict=True):
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


def _train_examples(data: DataConfig, where, ctx: _Context) -> int:
    """Training examples (public split included); checks that the data directory exists."""
    from bench.data import count_train_examples  # torch-heavy; see _canonical_norm

    must_exist = data.source == "imagefolder" or (data.source == "cifar10" and not data.download)
    if data.root is not None and must_exist and not os.path.isdir(data.root):
        hint = "an existing directory"
        if data.source == "cifar10":
            hint += ", or download: true"
        raise ctx.error(
            where("data", "root"), "directory does not exist", given=data.root, allowed=hint
        )
    try:
        return count_train_examples(data)
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


# --- helpers ----------------------------------------------------------------------------------


def _at_least(config: Any, names: Sequence[str], low: int) -> Iterator[Problem]:
    for name in names:
        if getattr(config, name) < low:
            yield name, f"must be at least {low}", f"an integer >= {low}"


def _data_to_dict(data: DataConfig) -> dict[str, Any]:
    """The data config with per-source defaults filled in, so equal data gives equal dicts."""
    out = _jsonable(dataclasses.asdict(data))
    out.update(dataset=data.dataset_name, num_train=data.train_size, num_test=data.test_size)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
