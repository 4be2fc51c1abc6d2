"""Per-cell checks: values after grid overrides, data sizes, public data, buildable pairs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from bench.backbones import create_backbone
from bench.config import GRID_SECTIONS, Cell, DataConfig, Suite
from bench.data.registry import resolve_source
from bench.errors import BenchError
from bench.plan import data_size, grad_sample_mode_problem
from bench.suite.independence import check_batch_independence
from bench.suite.reading import Context
from norms import resolve_norm
from norms.errors import NormError


def check_cells(suite: Suite, ctx: Context) -> None:
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
        _check_public_data(cell, norm_key or f"grid.norm[{norm_index[cell.norm]}]", where, ctx)
        mode_problem = grad_sample_mode_problem(cell.norm, cell.training.grad_sample_mode)
        if mode_problem:
            raise ctx.error(
                where("training", "grad_sample_mode"),
                mode_problem[0],
                given=cell.training.grad_sample_mode,
                allowed=mode_problem[1],
            )
    _check_builds(suite, norm_key or "grid.norm[{}]", norm_index, ctx)
    check_batch_independence(suite, norm_key or "grid.norm[{}]", norm_index, ctx)


def _check_public_data(cell: Cell, norm_key: str, where, ctx: Context) -> None:
    """A norm, a pruning or a dropping method that reads public data needs a public split."""
    if cell.data.public_split:
        return
    if resolve_norm(cell.norm).needs_public_data:
        raise ctx.error(
            norm_key,
            "needs public data but data.public_split is 0",
            given=cell.norm,
            allowed="data.public_split > 0 (examples held out of the private set)",
        )
    for name, public_method in (("pre_prune", "snip_public"), ("grad_drop", "public")):
        option = getattr(cell.training, name)
        if option is not None and option.method == public_method:
            raise ctx.error(
                f"{where('training', name)}.method",
                "reads public data but data.public_split is 0",
                given=public_method,
                allowed="data.public_split > 0, or a method that reads no data",
            )


def _check_builds(suite: Suite, key_form: str, norm_index: Mapping[str, int], ctx: Context):
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
            except (NormError, ValueError) as err:
                raise ctx.error(
                    key_form.format(norm_index[norm]),
                    f"{backbone} cannot build this norm: {err}",
                    given=norm,
                    allowed="values the norm accepts at every channel count of the backbone",
                ) from None


def _train_examples(data: DataConfig, where, ctx: Context) -> int:
    """Training examples (public split included); checks that the data's files are there."""
    source = resolve_source(data.source)  # the loader has checked the name
    if source.spec.needs_root and data.root is None:
        message = f"is required for source {data.source!r}"
        raise ctx.error(where("data", "root"), message, allowed="a directory path")
    if source.spec.needs_root and not data.download and not os.path.isdir(data.root):
        # A source whose sizes only a directory walk tells (a folder of images) cannot download.
        hint = "an existing directory" + ("" if source.spec.count else ", or download: true")
        raise ctx.error(
            where("data", "root"), "directory does not exist", given=data.root, allowed=hint
        )
    channels = source.declared("channels", data)
    for name in ("mean", "std"):
        value = getattr(data, name)
        if value is not None and len(value) != channels:
            message = f"has {len(value)} values for {data.source}'s {channels}-channel images"
            allowed = f"{channels} numbers, or null for the dataset's declared statistics"
            raise ctx.error(where("data", name), message, given=list(value), allowed=allowed)
    try:
        return data_size(data).n_train
    except BenchError as err:
        raise ctx.error(where("data", "root"), str(err), given=data.root) from None


def _check_sizes(cell: Cell, n_train: int, where, ctx: Context) -> None:
    """Raise the first problem of `_size_problems`, at the key that set the value."""
    for section, name, message, given, allowed in _size_problems(cell, n_train):
        raise ctx.error(where(section, name), message, given=given, allowed=allowed)


def _size_problems(cell: Cell, n_train: int) -> Iterator[tuple[str, str, str, Any, str]]:
    """Values impossible for ``n_train`` training examples, as ``(section, field, message,
    given, allowed)``; the caller stops at the first, so later checks may assume earlier ones."""
    data, privacy, training = cell.data, cell.privacy, cell.training
    if data.public_split >= n_train:
        message = f"leaves no private training data ({n_train} training examples)"
        yield "data", "public_split", message, data.public_split, f"0 <= public_split < {n_train}"
    n_private = n_train - data.public_split
    if data.val_split and data.val_split >= n_private - training.batch_size:
        message = (
            f"leaves fewer tuning examples than one batch ({n_private} private examples, "
            f"batch {training.batch_size})"
        )
        allowed = f"0 <= val_split < {n_private - training.batch_size}"
        yield "data", "val_split", message, data.val_split, allowed
    b = privacy.simulate_batch_size
    if b is not None and b > training.batch_size:
        message = (
            f"is larger than the batch it simulates ({training.batch_size}); a TAN simulation "
            "runs a smaller batch"
        )
        allowed = f"1 <= simulate_batch_size <= {training.batch_size}"
        yield "privacy", "simulate_batch_size", message, b, allowed
    if privacy.delta >= 1 / n_private:
        message = f"must be below 1/N = {1 / n_private:.3g} for N = {n_private} private examples"
        yield "privacy", "delta", message, privacy.delta, f"0 < delta < {1 / n_private:.3g}"
    if training.batch_size > n_private:
        message = f"is larger than the {n_private} private training examples"
        allowed = f"1 <= batch_size <= {n_private}"
        yield "training", "batch_size", message, training.batch_size, allowed
    steps = training.num_steps(n_private)
    if training.warmup_steps >= steps:
        message = f"is not shorter than the run ({steps} steps)"
        allowed = f"0 <= warmup_steps < {steps}"
        yield "training", "warmup_steps", message, training.warmup_steps, allowed
