"""A norm's DP claim is checked, not trusted: one that mixes the batch is refused at load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import norms
from bench.backbones import create_backbone
from bench.cli import main
from bench.config import DEFAULT_NORM
from bench.suite import load_suite
from norms import registry
from norms.errors import NormSpecError
from norms.independence import TOLERANCE, batch_dependence


class _BatchCentred(nn.Module):
    """A plugin author's norm: subtracts the batch mean (not DP: it mixes examples)."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=0, keepdim=True)) * self.weight.view(1, -1, 1, 1)


def _batch_centred(num_channels: int, *, device=None, dtype=None) -> nn.Module:
    """Subtracts the batch mean of every channel."""
    return _BatchCentred(num_channels).to(device=device, dtype=dtype)


@pytest.fixture
def own_registry(monkeypatch):
    """The norms registry, restored after the test (the plugin norms below are its own)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_plugin_norm_that_subtracts_the_batch_mean_is_refused_at_load_in_one_line(
    own_registry, tiny, tmp_path, capsys
):
    """Such a norm was recorded as DP-valid with no privacy cost."""
    registry.register_norm("batch_centred", grad_sampler="functorch")(_batch_centred)
    out = tmp_path / "out"
    argv = ["run", str(tiny), "--set", "grid.norm=[group_norm, batch_centred]", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        f"error: {tiny}: grid.norm[1] (from --set): mixes the examples of a batch on "
        "resnet9[width=0.125]: one example's output moved by "
    )
    assert "reads_across_examples" in err and "(given: 'batch_centred')" in err
    assert not out.exists()


def test_a_norm_that_declares_reading_across_examples_and_its_charge_is_not_refused(
    own_registry, tiny
):
    registry.register_norm(
        "batch_centred",
        grad_sampler="functorch",
        reads_across_examples=True,
        charge=lambda model, norm, n_private: None,
    )(_batch_centred)
    suite = load_suite(tiny, ["grid.norm=[batch_centred]"])
    assert norms.resolve_norm(suite.cells()[0].norm).reads_across_examples


def test_declaring_reads_across_examples_without_a_charge_is_refused_at_registration(
    own_registry,
):
    with pytest.raises(NormSpecError, match="declares reads_across_examples but not what it"):
        registry.register_norm("batch_centred", reads_across_examples=True)(_batch_centred)
    registry.register_norm("batch_centred", reads_across_examples=True, dp_safe=False)(
        _batch_centred
    )
    assert norms.resolve_norm("batch_centred").dp_status == "not DP"


@pytest.mark.parametrize("norm", norms.list_norms())
def test_every_registered_norm_leaves_each_example_independent_of_its_batch(norm):
    model = create_backbone("resnet9[width=0.125]", norm=norm)
    assert batch_dependence(model, (3, 16, 16)) <= TOLERANCE
    assert model.training  # the check restores the mode it found


def test_the_check_sees_a_batch_mean_at_the_end_of_a_backbone_and_restores_eval_mode():
    model = create_backbone("resnet9[width=0.125]", norm=DEFAULT_NORM).eval()
    model.features.append(_BatchCentred(model.num_features // 4))
    assert batch_dependence(model, (3, 16, 16)) > 100 * TOLERANCE
    assert not model.training
