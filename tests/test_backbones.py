"""Backbones: timm-registered, every norm fits, no in-place ops, ScaleNorm/KernelNorm wired."""

from __future__ import annotations

import pytest
import timm
import torch
from opacus.validators import ModuleValidator
from torch import nn

import norms
from bench.backbones import create_backbone, get_backbone, list_backbones, resolve_backbone
from bench.backbones.layers import Residual
from bench.errors import BackboneError
from norms.kernel_norm import KNConv2d

BACKBONES = sorted(list_backbones())


def test_registry_holds_the_four_backbones_of_the_design():
    assert set(BACKBONES) == {"resnet9", "wrn16_4", "resnet18", "knresnet13"}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("norm", norms.list_norms())
def test_every_backbone_takes_every_norm_through_timm_and_opacus_accepts_it(backbone, norm):
    timm_name = get_backbone(backbone).timm_name
    model = timm.create_model(timm_name, norm=norm, num_classes=7, width=0.125)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert ModuleValidator.validate(model, strict=False) == []
    assert model.norm_spec == str(norms.resolve_norm(norm))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_no_module_runs_in_place(backbone):
    model = create_backbone(backbone, norm="scale_norm", width=0.125)
    assert not [m for m in model.modules() if getattr(m, "inplace", False)]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_scale_norm_adds_a_separate_norm_after_every_residual_addition(backbone):
    plain = create_backbone(backbone, norm="group_norm", width=0.125)
    scaled = create_backbone(backbone, norm="scale_norm", width=0.125)
    residuals = [m for m in scaled.modules() if isinstance(m, Residual)]
    assert residuals and all(type(r.post) is nn.GroupNorm for r in residuals)
    branch_norms = {id(m) for r in residuals for m in r.branch.modules()}
    assert not any(id(r.post) in branch_norms for r in residuals)
    assert all(isinstance(m.post, nn.Identity) for m in plain.modules() if isinstance(m, Residual))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_kernel_norm_replaces_every_conv_norm_pair_by_a_knconv(backbone):
    model = create_backbone(backbone, norm="kernel_norm", width=0.125)
    assert any(isinstance(m, KNConv2d) for m in model.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in model.modules())
    plain_convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(plain_convs) <= 1  # at most the WRN stem, which has no norm to fuse


@pytest.mark.parametrize(
    ("backbone", "millions"),
    [("resnet9", 2.45), ("wrn16_4", 2.75), ("resnet18", 11.17), ("knresnet13", 3.70)],
)
def test_full_width_parameter_counts_match_the_architectures(backbone, millions):
    model = create_backbone(backbone, norm="group_norm")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_unknown_backbone_and_parameters_are_rejected_with_suggestions():
    with pytest.raises(BackboneError, match="did you mean 'resnet18'"):
        resolve_backbone("resnt18")
    with pytest.raises(BackboneError, match="its parameters: act_layer, width"):
        resolve_backbone("resnet9[depth=3]")
    assert str(resolve_backbone("wrn16_4[width=1.0,ws=false]")) == "wrn16_4[ws=false]"


def test_weight_standardisation_is_optional_on_wrn():
    ws = create_backbone("wrn16_4", width=0.125)
    plain = create_backbone("wrn16_4[ws=false]", width=0.125)
    assert any(isinstance(m, timm.layers.ScaledStdConv2d) for m in ws.modules())
    assert not any(isinstance(m, timm.layers.ScaledStdConv2d) for m in plain.modules())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_takes_the_shared_width_and_activation(backbone):
    defaults = get_backbone(backbone).defaults
    assert {k: defaults[k] for k in ("width", "act_layer")} == {"width": 1.0, "act_layer": "relu"}
    kinds = {type(m) for m in create_backbone(f"{backbone}[act_layer=gelu]", width=0.125).modules()}
    assert type(timm.layers.create_act_layer("gelu")) in kinds
    assert nn.ReLU not in kinds


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize(
    ("param", "value"),
    [("width", "0"), ("width", "-1"), ("width", "inf"), ("width", "nan"), ("act_layer", "relu7")],
)
def test_a_value_no_backbone_can_build_is_refused_by_its_rule(backbone, param, value):
    """width=0 once trained the 16-channel model and recorded it as width 0."""
    with pytest.raises(BackboneError, match=f"{param}=.* is not allowed; allowed: "):
        resolve_backbone(f"{backbone}[{param}={value}]")
    with pytest.raises(BackboneError, match="is not allowed"):
        timm.create_model(get_backbone(backbone).timm_name, **{param: value})
