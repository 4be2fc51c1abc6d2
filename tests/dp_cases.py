"""The models the DP oracle tests sweep: every norm variant in every small backbone, per mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import norms
from bench.backbones import list_backbones
from tests.dp_oracles import norm_variants, oracle_variant, prepared_backbone

#: Every registered norm and the variants it declares, deterministic for the oracles (e.g.
#: statistics dropout off); the mixing test sweeps `MIXING_VARIANTS`, dropout on.
MIXING_VARIANTS = norm_variants()
NORM_VARIANTS = [oracle_variant(v) for v in MIXING_VARIANTS]
WIDTH, SIZE = 0.125, 16


def build(backbone: str, norm: str, dtype: torch.dtype = torch.float64) -> nn.Module:
    """``backbone`` with ``norm`` at the oracle tests' width and image size, prepared."""
    return prepared_backbone(backbone, norm, width=WIDTH, size=SIZE, dtype=dtype)


#: Every (backbone, norm variant) in each grad-sample mode the norm declares.
GRAD_SAMPLE_CASES = [
    pytest.param(b, n, mode, id=f"{b}-{n}-{mode}")
    for b in sorted(list_backbones())
    for n in NORM_VARIANTS
    for mode in norms.resolve_norm(n).spec.grad_sample_modes
]
