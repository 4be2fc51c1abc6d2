"""The perf kinds time real DP-SGD: Opacus' ghost step clips each example to C, adds noise."""

from __future__ import annotations

import copy

import pytest
import torch

from bench.perf import OpacusGhostStep, make_step
from tests.bk_cases import oracle
from tests.dp_oracles import oracle_variant, prepared_backbone

SIZE = 16


def ghost_update(model, x, y, *, clip: float, noise: float, physical: int) -> list[torch.Tensor]:
    """The gradient an `OpacusGhostStep` hands its optimiser for ``x``, with expected batch 1
    (so it is the noised sum of clipped per-example gradients) and learning rate 0; on a copy
    of ``model``, which stays free of Opacus' hooks."""
    model = copy.deepcopy(model)
    step = OpacusGhostStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=noise,
        max_grad_norm=clip,
        expected_batch_size=1,
        max_physical_batch=physical,
        generator=torch.Generator().manual_seed(0),
    )
    step(x, y)
    return [p.grad.detach().clone() for p in step.params]


@pytest.mark.parametrize(
    ("backbone", "norm"),
    [
        ("resnet9", "group_norm"),
        ("wrn16_4", "layer_norm"),  # weight-standardised convs: Opacus' functorch path
        ("knresnet13", "kernel_norm"),
        ("resnet18", "dp_batch_norm[stats=private_dp]"),
    ],
)
def test_opacus_ghost_step_sums_clipped_one_example_gradients(backbone, norm):
    """Noise 0, clip at the median norm (some examples clipped), three examples split into two
    physical batches: the update is the one-example oracle's sum of clipped gradients."""
    model = prepared_backbone(backbone, oracle_variant(norm), width=0.125, size=SIZE)
    x = torch.randn(3, 1, 3, SIZE, SIZE, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    _, norms = oracle(model, x, y, clip=1e9)
    clip = float(norms.median())
    expected, _ = oracle(model, x, y, clip)
    got = ghost_update(model, x, y, clip=clip, noise=0.0, physical=2)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, atol=1e-9, rtol=1e-6)


def test_each_examples_contribution_to_the_ghost_update_is_at_most_the_clip():
    model = prepared_backbone("resnet9", "group_norm", width=0.125, size=SIZE)
    clip = 1e-3  # below every example's gradient norm
    for label in range(4):
        x = torch.randn(1, 1, 3, SIZE, SIZE, dtype=torch.float64)
        got = ghost_update(model, x, torch.tensor([label]), clip=clip, noise=0.0, physical=1)
        norm = float(torch.sqrt(sum(g.square().sum() for g in got)))
        assert clip * (1 - 1e-6) <= norm <= clip * (1 + 1e-9)


def test_the_ghost_update_carries_gaussian_noise_of_std_sigma_times_clip():
    model = prepared_backbone("resnet9", "group_norm", width=0.125, size=SIZE)
    x = torch.randn(4, 1, 3, SIZE, SIZE, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    clean = ghost_update(model, x, y, clip=1.0, noise=0.0, physical=4)
    noised = ghost_update(model, x, y, clip=1.0, noise=2.0, physical=4)
    noise = torch.cat([(n - c).flatten() for n, c in zip(noised, clean, strict=True)])
    assert noise.numel() > 10_000
    assert abs(float(noise.std()) / 2.0 - 1) < 0.03
    assert abs(float(noise.mean())) < 0.05


def test_the_ghost_step_refuses_what_it_cannot_clip_correctly():
    step, x, _ = make_step("resnet9", "group_norm", "dp-opacus-ghost", batch=2, width=0.125)
    with pytest.raises(ValueError, match="one view per example"):
        step(torch.cat([x, x], dim=1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="fp32 only"):
        make_step(
            "resnet9", "group_norm", "dp-opacus-ghost", batch=2, width=0.125, precision="bf16"
        )


def test_an_empty_logical_batch_is_a_noise_only_ghost_step():
    model = prepared_backbone("resnet9", "group_norm", width=0.125, size=SIZE)
    x = torch.zeros(0, 1, 3, SIZE, SIZE, dtype=torch.float64)
    got = ghost_update(model, x, torch.zeros(0, dtype=torch.long), clip=1.0, noise=1.0, physical=4)
    assert all(g.abs().sum() > 0 for g in got)
