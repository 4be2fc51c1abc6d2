"""The text of ``python -m bench list``: registered norms and backbones with their parameters."""

from __future__ import annotations

from tabulate import tabulate

import norms
from bench.backbones import get_backbone, list_backbones


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
        ]
    )
