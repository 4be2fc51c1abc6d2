"""The norms registry contract, parametrised over every registered norm."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from opacus.grad_sample import GradSampleModule
from torch import nn

import norms
import specs
from norms.errors import DuplicateNormError, NormSpecError, UnknownNormError
from norms.registry import GRAD_SAMPLERS, register_norm


@pytest.mark.parametrize("name", norms.list_norms())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_norm_builds_from_channels_device_dtype_and_keeps_shape(name, dtype):
    layer = norms.create_norm(name, 32, device="cpu", dtype=dtype)
    x = torch.randn(2, 32, 5, 7, dtype=dtype)
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert all(p.dtype == dtype for p in layer.parameters())


def test_registry_holds_the_norms_of_the_design():
    assert set(norms.list_norms()) >= {
        "none",
        "group_norm",
        "layer_norm",
        "scale_norm",
        "dp_batch_norm",
        "kernel_norm",
    }


@pytest.mark.parametrize("name", norms.list_norms())
def test_every_norm_declares_a_known_grad_sample_path(name):
    spec = norms.get_norm(name)
    assert spec.grad_sampler in GRAD_SAMPLERS
    assert set(spec.grad_sample_modes) <= {"hooks", "functorch", "ew", "ghost"}
    assert spec.dp_safe


@pytest.mark.parametrize("name", norms.list_norms())
def test_opacus_has_an_exact_type_sampler_for_every_layer_a_norm_claims(name):
    """Opacus looks samplers up by exact type: no layer may silently fall back to functorch."""
    spec = norms.get_norm(name)
    layer = norms.create_norm(name, 16)
    if spec.fused_conv:
        layer = nn.Sequential(layer, norms.resolve_norm(name).fused_conv_layer(16, 16, 3))
    trainable = [m for m in layer.modules() if any(True for _ in m.parameters(recurse=False))]
    if spec.grad_sampler == "none":
        assert trainable == []
    else:
        assert trainable and all(type(m) in GradSampleModule.GRAD_SAMPLERS for m in trainable)


def test_unknown_norm_lists_registered_names_and_closest_match():
    with pytest.raises(UnknownNormError) as err:
        norms.create_norm("gruop_norm", 8)
    text = str(err.value)
    assert "did you mean 'group_norm'" in text
    assert all(name in text for name in norms.list_norms())


def test_unknown_or_badly_typed_parameters_are_rejected_with_the_allowed_ones():
    with pytest.raises(NormSpecError, match=r"its parameters: .*num_groups"):
        norms.resolve_norm("group_norm[groups=8]")
    with pytest.raises(NormSpecError, match="num_groups must be int"):
        norms.resolve_norm("group_norm[num_groups=many]")
    with pytest.raises(NormSpecError, match="allowed: public, private_dp"):
        norms.resolve_norm("dp_batch_norm[stats=batch]")
    with pytest.raises(NormSpecError, match="malformed"):
        specs.parse_spec("group_norm[num_groups]", "norm", NormSpecError)


def test_group_norm_takes_groups_or_group_size():
    assert norms.create_norm("group_norm", 64).num_groups == 16
    assert norms.create_norm("group_norm", 8).num_groups == 8  # min(G, C), as Klause et al.
    assert norms.create_norm("group_norm[group_size=32]", 64).num_groups == 2
    with pytest.raises(NormSpecError, match="do not split"):
        norms.create_norm("group_norm", 24)


def test_layer_norm_is_group_norm_with_one_group_by_default():
    layer = norms.create_norm("layer_norm", 16)
    assert type(layer) is nn.GroupNorm and layer.num_groups == 1


def test_registering_a_taken_name_raises():
    with pytest.raises(DuplicateNormError):
        register_norm("group_norm")(lambda c, *, device=None, dtype=None: nn.Identity())


@given(num_groups=st.sampled_from([1, 2, 4, 8, 16, 32]), eps=st.sampled_from([1e-5, 1e-3]))
def test_spec_strings_are_canonical_sorted_and_drop_defaults(num_groups, eps):
    resolved = norms.resolve_norm(f"group_norm[num_groups={num_groups},eps={eps}]")
    text = str(resolved)
    assert norms.resolve_norm(text) == resolved
    explicit = {
        k: v
        for k, v in (("eps", eps), ("num_groups", num_groups))
        if v != norms.get_norm("group_norm").defaults[k]
    }
    assert text == specs.format_spec("group_norm", explicit)
    if explicit:
        keys = [kv.split("=")[0] for kv in text[text.index("[") + 1 : -1].split(",")]
        assert keys == sorted(keys)
    else:
        assert text == "group_norm"


def test_dp_batch_norm_variants_declare_their_data_and_privacy_needs():
    public = norms.resolve_norm("dp_batch_norm[stats=public]")
    private = norms.resolve_norm("dp_batch_norm[stats=private_dp]")
    assert public.needs_public_data and not public.privacy_cost
    assert private.privacy_cost and not private.needs_public_data
