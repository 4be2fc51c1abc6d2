"""The text of ``python -m bench list``: the registered norms, backbones and datasets."""

from __future__ import annotations

from tabulate import tabulate

import norms
from bench.backbones import get_backbone, list_backbones
from bench.config import DataConfig
from bench.data import get_dataset, list_datasets


def _params(defaults, choices=None) -> str:
    choices = choices or {}
    parts = []
    for key in sorted(defaults):
        value = defaults[key]
        text = f"{key}={'true' if value is True else 'false' if value is False else value}"
        if key in choices:
            text += " (" + "|".join(map(str, choices[key])) + ")"
        parts.append(text)
    return ", ".join(parts) or "-"


def _dp_status(spec: norms.NormSpec) -> str:
    """The norm's DP status; per value of a choice parameter where the values differ."""
    default = spec.resolve().dp_status
    for key, values in spec.choices.items():
        statuses = {v: spec.resolve({key: v}).dp_status for v in values}
        if len(set(statuses.values())) > 1:
            return "; ".join(f"{key}={v}: {status}" for v, status in statuses.items())
    return default


def render_listing() -> str:
    """Tables of the registered norms and backbones."""
    norm_rows = []
    for name in norms.list_norms():
        spec = norms.get_norm(name)
        wiring = (
            "fused conv"
            if spec.fused_conv
            else "+ norm after each residual add"
            if spec.post_residual
            else "norm layer"
        )
        norm_rows.append(
            [
                name,
                _params(spec.defaults, spec.choices),
                _dp_status(spec),
                f"{spec.grad_sampler} ({'/'.join(spec.grad_sample_modes)})",
                wiring,
                spec.description,
            ]
        )
    backbone_rows = []
    for name in list_backbones():
        spec = get_backbone(name)
        backbone_rows.append([name, spec.timm_name, _params(spec.defaults), spec.description])
    dataset_rows = _dataset_rows()
    return "\n".join(
        [
            f"Norms ({len(norm_rows)})",
            tabulate(
                norm_rows,
                headers=[
                    "name",
                    "parameters",
                    "DP status",
                    "grad sampler (modes)",
                    "in a backbone",
                    "description",
                ],
            ),
            "",
            f"Backbones ({len(backbone_rows)})",
            tabulate(backbone_rows, headers=["name", "timm name", "parameters", "description"]),
            "",
            f"Datasets ({len(dataset_rows)}; data.source)",
            tabulate(
                dataset_rows,
                headers=["name", "parameters", "image", "classes", "train", "flip", "description"],
            ),
        ]
    )


def _dataset_rows() -> list[list[str]]:
    """One row per dataset: what it implies at its default parameters (``-``: its files tell)."""
    rows = []
    cfg = DataConfig()  # the synthetic set's sizes, for the one source that reads them
    for name in list_datasets():
        spec = get_dataset(name)
        source = spec.resolve()
        side = source.declared("image_size", cfg)
        shape = f"{source.declared('channels', cfg)}x{side}x{side}" if side else "-"
        classes = source.declared("num_classes", cfg)
        train = source.declared("num_train", cfg)
        flip = "yes" if source.declared("flip", cfg) else "no"
        params = _params(spec.defaults, spec.choices)
        rows.append([name, params, shape, classes or "-", train or "-", flip, spec.description])
    return rows
