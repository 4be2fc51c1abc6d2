"""The book-keeping clipper's clipped sums equal clipping one-example gradients, for every pair."""

from __future__ import annotations

import math
from itertools import combinations, product

import pytest
import torch
from timm.layers import ScaledStdConv2d
from torch import nn

import bkclip.maths
from bench.backbones import create_backbone, list_backbones
from bench.errors import user_errors
from bkclip import (
    BookKeepingClipper,
    ClipRule,
    ClipRuleError,
    layer_norms,
    register_clip_fallback,
    register_clip_rule,
    rule_for,
)
from norms.errors import NormError
from tests.bk_cases import BK_CASES, FACTORS, assert_clipped_sums_match_the_oracle
from tests.dp_cases import NORM_VARIANTS, SIZE, WIDTH, build
from tests.dp_oracles import norms_of, per_example_grads, prepared_backbone


def test_the_design_covers_every_value_and_every_pair_of_values():
    rows = [dict(zip(FACTORS, case.values, strict=True)) for case in BK_CASES]
    for name, values in FACTORS.items():
        assert {row[name] for row in rows} == set(values), name
    for a, b in combinations(FACTORS, 2):
        assert {(row[a], row[b]) for row in rows} == set(product(FACTORS[a], FACTORS[b])), (a, b)
    assert len(rows) < math.prod(len(values) for values in FACTORS.values())


@pytest.mark.parametrize(("backbone", "norm", "views", "strategy", "keep"), BK_CASES)
def test_clipped_sums_equal_clipping_one_example_gradients(backbone, norm, views, strategy, keep):
    assert_clipped_sums_match_the_oracle(build(backbone, norm), views, strategy, keep)


def test_every_layer_of_every_pair_has_a_dedicated_rule():
    for backbone in list_backbones():
        for norm in NORM_VARIANTS:
            model = create_backbone(backbone, norm=norm, width=WIDTH)
            fallback = {
                type(m).__name__
                for m in model.modules()
                if any(True for _ in m.parameters(recurse=False)) and rule_for(m) == "fallback"
            }
            assert not fallback, (backbone, norm, fallback)


def test_an_empty_batch_adds_nothing():
    model = build("resnet9", "group_norm")
    clipper = BookKeepingClipper(model)
    clipper.accumulate(
        torch.zeros(0, 1, 3, SIZE, SIZE, dtype=torch.float64),
        torch.zeros(0, dtype=torch.long),
        max_grad_norm=1.0,
    )
    assert all(getattr(p, "summed_grad", None) is None for p in model.parameters())


@pytest.mark.parametrize(
    ("backbone", "norm"),
    [("resnet18", "scale_norm"), ("knresnet13", "layer_norm"), ("wrn16_4", "group_norm")],
)
def test_bf16_autocast_keeps_each_clipped_contribution_within_the_bound(backbone, norm):
    """Under bf16 autocast, one example's clipped gradient has norm at most C (to fp32 rounding).

    Norms or sums taken in bf16 overshoot C by up to ~0.3% on these models, which would break
    the sensitivity the accountant assumes.
    """
    torch.manual_seed(0)
    model = prepared_backbone(backbone, norm, width=0.25, size=32, dtype=torch.float32)
    clipper = BookKeepingClipper(model)
    clip = 1e-3  # far below every example's norm, so every example is clipped
    ratios = []
    for label in range(6):
        for p in model.parameters():
            p.summed_grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            clipper.accumulate(
                torch.randn(1, 1, 3, 32, 32), torch.tensor([label]), max_grad_norm=clip
            )
        grads = [p.summed_grad.double() for p in model.parameters() if p.requires_grad]
        ratios.append(float(torch.sqrt(sum(g.square().sum() for g in grads))) / clip)
    assert max(ratios) <= 1 + 1e-5, ratios
    assert min(ratios) >= 1 - 1e-3, ratios  # and clipping did take each to C


@pytest.mark.parametrize("strategy", ["ghost", "materialise"])
@pytest.mark.parametrize("with_output", [True, False])
@pytest.mark.parametrize("gain", ["trained", "some zero"])
def test_ws_conv_norms_on_every_route(strategy, with_output, gain):
    """timm's WS conv: ghost (output read or recomputed, gains near zero included) and
    materialised routes all give the per-example norms."""
    torch.manual_seed(0)
    layer = ScaledStdConv2d(6, 5, 3, padding=1, stride=2).double()
    with torch.no_grad():
        layer.gain.uniform_(0.5, 1.5)
        layer.bias.normal_()
        if gain == "some zero":
            layer.gain[:2] = 0.0
    x = torch.randn(4, 6, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
    g = torch.randn_like(out)
    got = layer_norms(layer, [x], g, output=out if with_output else None, strategy=strategy)
    torch.testing.assert_close(got, norms_of(per_example_grads(layer)(g, x)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("backbone", "norm", "views", "strategy"),
    [
        ("wrn16_4", "group_norm", 2, "ghost"),
        ("knresnet13", "kernel_norm[dropout=0.0,head_dropout=0.0]", 1, "ghost"),
        ("resnet9", "layer_norm", 2, "auto"),
        ("resnet18", "dp_batch_norm[stats=public]", 1, "ghost"),
    ],
)
def test_temporaries_split_by_examples_give_the_same_sums(
    monkeypatch, backbone, norm, views, strategy
):
    """Full-size models split ghost and affine temporaries into slices of examples; the test
    models are too small to, so force it (every slice one example) and check against the oracle."""
    monkeypatch.setattr(bkclip.maths, "SLICE_BYTES", 1)
    assert_clipped_sums_match_the_oracle(build(backbone, norm), views, strategy)


class _TwoInputs(nn.Module):
    """A layer whose output depends on two tensor inputs; opted into the fallback, which
    differentiates it through functorch with respect to its first input only."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x, y):
        return x * self.weight + y * self.weight


class _ParentWithOwnWeight(nn.Module):
    """Owns a parameter and has a child with parameters: the child would be counted twice."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return self.inner(x) * self.scale


class _HalfRule(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(4))
        self.b = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.a + self.b


register_clip_fallback(_TwoInputs, _ParentWithOwnWeight)


@register_clip_rule(_HalfRule)
class _HalfRuleClip(ClipRule):
    """A faulty rule: norms and sums for ``a`` only, so ``b`` would silently get noise only."""

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        state.per_view = {layer.a: inputs[0] * g}
        return state.per_view[layer.a].square().sum(1)

    def clipped_sum(self, layer, inputs, g, coef, state):
        return {layer.a: coef @ state.per_view[layer.a]}


class _Head(nn.Module):
    """Flattens an image batch to 4 features, runs ``body``, classifies."""

    def __init__(self, body: nn.Module, call=lambda body, h: body(h)):
        super().__init__()
        self.body, self.call, self.out = body, call, nn.Linear(4, 3)

    def forward(self, x):
        h = x.flatten(1)[:, :4]
        return self.out(self.call(self.body, h))


def accumulate(model: nn.Module) -> BookKeepingClipper:
    clipper = BookKeepingClipper(model)
    clipper.accumulate(torch.randn(5, 1, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1]), max_grad_norm=1)
    return clipper


def test_a_parameter_shared_by_two_layers_is_refused_naming_it():
    """Shared: its norms would add in quadrature but its sums linearly (up to sqrt(2) C)."""
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = _Head(nn.Sequential(first, second))
    with pytest.raises(ClipRuleError, match=r"body\.0\.weight is shared with"):
        BookKeepingClipper(model)


def test_a_layer_with_own_parameters_and_parameterised_children_is_refused():
    with pytest.raises(ClipRuleError, match="children with trainable parameters"):
        BookKeepingClipper(_Head(_ParentWithOwnWeight()))


def test_a_fallback_layer_with_two_tensor_inputs_is_refused():
    model = _Head(_TwoInputs(), call=lambda body, h: body(h, h.flip(1)))
    with pytest.raises(ClipRuleError, match="takes 2 tensor inputs"):
        accumulate(model)


def test_a_rule_that_leaves_a_parameter_without_a_clipped_sum_is_refused():
    with pytest.raises(ClipRuleError, match=r"parameter\(s\) b"):
        accumulate(_Head(_HalfRule()))


def test_a_layer_the_backward_pass_never_reaches_is_reported():
    """A trainable layer outside the loss gets noise only and never trains: it is named."""
    model = _Head(nn.Linear(4, 4))
    model.unused = nn.Linear(4, 4)
    clipper = accumulate(model)
    assert clipper.unreached_layers == ["unused"]
    assert BookKeepingClipper(model).unreached_layers == ["body", "out", "unused"]  # no step yet


def test_a_clipping_error_is_a_user_error_of_its_own_kind():
    """The CLI prints it as one line with exit code 2; it is the clipper's, not a norm's."""
    assert issubclass(ClipRuleError, user_errors())
    assert not issubclass(ClipRuleError, NormError)
