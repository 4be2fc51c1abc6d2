"""The datasets registry: register a data source by name, parse source specs, read declarations."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench.config import DataConfig
from bench.errors import DataError
from specs import (
    ResolvedSpec,
    closest,
    keyword_defaults,
    load_entry_points,
    parse_spec,
    resolve_params,
    summary,
)

#: The entry-point group through which other packages add datasets: each entry point names a
#: module (``my_package.my_data``) that registers its datasets with `register_dataset` on import.
ENTRY_POINT_GROUP = "dp_norm_bench.datasets"

#: A declared property: a value, or ``fn(cfg, params)`` for one that depends on the spec's
#: parameters or on the data config (a folder's name, the synthetic set's size).
Declared = Any
Loader = Callable[..., "Decoded"]


class Decoded(NamedTuple):
    """What a source's loader returns: uint8 ``(N, C, H, W)`` images, int64 labels, class names."""

    train_x: Any
    train_y: Any
    test_x: Any
    test_y: Any
    classes: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data source and what it implies for a run.

    Attributes:
        name: Stable identifier used in ``data.source``, records and reports.
        loader: ``loader(cfg, **params) -> Decoded``: reads the publisher's files under
            ``cfg.root`` (verifying checksums unless ``cfg.verify_checksum`` is false) and
            decodes them once.
        description: One line for ``bench list`` (the loader's docstring summary).
        defaults: The loader's keyword parameters with their defaults (``labels="fine"``).
        choices: Allowed values for string parameters, where they are a closed set.
        label: Human name for reports (``CIFAR-100``); may depend on the parameters.
        channels: Image channels; a backbone takes its ``in_chans`` from here.
        image_size: Side of the (square) images the loader returns, padding included; None
            when only decoding tells (a folder of images).
        num_classes: Classes; None when only the files tell.
        num_train: Training examples of the publisher's files; None when only the files tell.
        flip: Whether a horizontal flip keeps the class (False for digits): the augmentation
            uses it only where it does.
        mean: Per-channel mean of the [0, 1] inputs: declared constants, never computed from
            the private set.
        std: Per-channel standard deviation, likewise.
        files: Where the files come from and how to get them, for the missing-files message.
        needs_root: Whether ``data.root`` must name a directory (every source of files).
        count: ``count(cfg, params) -> (n_train, num_classes)`` for a source whose sizes only
            its files tell, cheaper than decoding (a directory walk); None: decode to count.
        check_files: ``check_files(cfg, params)``: raises `DataError` (one line: where the
            files were looked for, how to get them) when they are missing, without reading
            them; called when a suite is checked, so a missing file stops it before any run.
    """

    name: str
    loader: Loader
    description: str
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    label: Declared = None
    channels: Declared = 3
    image_size: Declared = None
    num_classes: Declared = None
    num_train: Declared = None
    flip: Declared = True
    mean: Declared = (0.5, 0.5, 0.5)
    std: Declared = (0.25, 0.25, 0.25)
    files: str = ""
    needs_root: bool = True
    count: Callable[[DataConfig, Mapping[str, Any]], tuple[int, int]] | None = None
    check_files: Callable[[DataConfig, Mapping[str, Any]], None] | None = None

    def resolve(self, params: Mapping[str, Any] | None = None) -> ResolvedDataset:
        """Check ``params`` against the loader's signature and return the concrete source.

        Raises:
            DataError: An unknown parameter, a value of the wrong type or one outside choices.
        """
        full, explicit = resolve_params(
            "dataset", self.name, self.defaults, params or {}, self.choices, error=DataError
        )
        return ResolvedDataset(spec=self, params=full, explicit=explicit)


@dataclass(frozen=True)
class ResolvedDataset(ResolvedSpec[DatasetSpec]):
    """A data source with its parameters fixed; ``str()`` is the canonical ``data.source``."""

    def declared(self, what: str, cfg: DataConfig) -> Any:
        """The declared property ``what`` (a `DatasetSpec` field) under ``cfg``."""
        value = getattr(self.spec, what)
        return value(cfg, self.params) if callable(value) else value

    def load(self, cfg: DataConfig) -> Decoded:
        """Decode the source's files (or generate the data) as ``cfg`` says."""
        return self.spec.loader(cfg, **self.params)


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(name: str, **declared: Any) -> Callable[[Loader], Loader]:
    """Register a loader under ``name``; ``declared`` are `DatasetSpec` fields (``channels``,
    ``image_size``, ``num_classes``, ``num_train``, ``flip``, ``mean``, ``std``, ``label``,
    ``files``, ``choices``, ``needs_root``, ``count``).

    Raises:
        DataError: When ``name`` is already registered or a field is not a `DatasetSpec` one.
    """
    known = {f.name for f in dataclasses.fields(DatasetSpec)} - {
        "name",
        "loader",
        "description",
        "defaults",
    }
    unknown = sorted(set(declared) - known)
    if unknown:
        raise DataError(
            f"dataset {name!r}: unknown declaration {unknown[0]!r}; allowed: "
            f"{', '.join(sorted(known))}"
        )

    def decorator(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise DataError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = DatasetSpec(
            name=name,
            loader=loader,
            description=summary(loader),
            defaults=keyword_defaults(loader, (), DataError),
            **declared,
        )
        return loader

    return decorator


_PLUGINS_LOADED: set[str] = set()


def load_plugins() -> list[str]:
    """Import every module of the `ENTRY_POINT_GROUP` not imported yet; the names loaded now.

    Raises:
        DataError: An entry point fails to import (names it and the error).
    """
    return load_entry_points(ENTRY_POINT_GROUP, _PLUGINS_LOADED, "dataset", DataError)


def get_dataset(name: str) -> DatasetSpec:
    """The spec registered under ``name`` (by this package or by a plugin).

    Raises:
        DataError: Listing the registered names and the closest match.
    """
    if name not in _REGISTRY:
        load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    message = f"unknown data source {name!r}; registered datasets: {', '.join(sorted(_REGISTRY))}"
    hint = closest(name, _REGISTRY)
    raise DataError(message + (f" (did you mean {hint!r}?)" if hint else ""))


def list_datasets() -> list[str]:
    """Registered dataset names, built-in ones in registration order, then the plugins'."""
    load_plugins()
    return list(_REGISTRY)


def resolve_source(source: str) -> ResolvedDataset:
    """The dataset a ``data.source`` spec string (``cifar100[labels=coarse]``) names.

    Raises:
        DataError: A malformed spec, an unknown name or parameter.
    """
    name, params = parse_spec(source, "dataset", DataError)
    return get_dataset(name).resolve(params)


def resolve_data_config(cfg: DataConfig) -> DataConfig:
    """``cfg`` with what its dataset declares filled in: the canonical source spec, the
    normalisation statistics left unset (None) and the report name.

    Applied to every cell a suite file makes, so a record and its run key hold the statistics
    actually used (CIFAR-10's for ``cifar10``, as before there was a registry).

    Raises:
        DataError: The source names no registered dataset.
    """
    source = resolve_source(cfg.source)
    changes: dict[str, Any] = {}
    if str(source) != cfg.source:
        changes["source"] = str(source)
    for name in ("mean", "std"):
        if getattr(cfg, name) is None:
            changes[name] = tuple(float(v) for v in source.declared(name, cfg))
    label = source.declared("label", cfg)
    if cfg.dataset is None and label is not None:
        changes["dataset"] = label
    return dataclasses.replace(cfg, **changes) if changes else cfg
