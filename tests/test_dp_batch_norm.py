"""DP-safe BatchNorm: public stats read no private data; DP stats are a Gaussian mechanism."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

import norms
from bench.backbones import create_backbone
from bench.results.records import read_records
from bench.seeds import stream
from bench.suite import load_suite
from bench.sweep.options import RunOptions
from bench.sweep.run import run_suite
from bench.train.cell import train_cell
from norms.dp_batch_norm import reference_indices
from norms.errors import NormSpecError
from norms.frozen_stats import FrozenStatsNorm, frozen_stats_layers
from norms.lifecycle import RunData
from norms.stats_calibration import (
    calibrate,
    calibrate_private,
    clip_rows,
    gaussian_sum,
    per_example_moments,
    refresh_statistics,
)
from tests.dp_oracles import grad_sample_mismatches, mixing_examples
from tests.resume_tools import Killed, cell, comparable, kill_at
from tests.tiny_suite import TINY


def model_with(norm: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("resnet9", norm=norm, width=0.125).double()


def test_public_statistics_are_computed_from_public_examples_only():
    model = model_with("dp_batch_norm[stats=public]")
    public = torch.randn(32, 3, 16, 16, dtype=torch.float64)
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    assert calibrate(model, lambda: [public[:16], public[16:]]) is None  # no privacy cost
    hook.remove()
    assert seen and all(any(torch.equal(s, public[i : i + len(s)]) for i in (0, 16)) for s in seen)
    # The first layer's statistics are exactly the public inputs' channel moments.
    first = frozen_stats_layers(model, public[:1])[0]
    conv = model.features[0][0][0]
    with torch.no_grad():
        h = conv(public)
    torch.testing.assert_close(first.mean, h.mean(dim=(0, 2, 3)), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(
        first.var, h.var(dim=(0, 2, 3), unbiased=False), atol=1e-8, rtol=1e-6
    )


def test_frozen_statistics_never_change_during_training_forward_passes():
    model = model_with("dp_batch_norm[stats=public]")
    calibrate(model, lambda: [torch.randn(16, 3, 16, 16, dtype=torch.float64)])
    before = {k: v.clone() for k, v in model.state_dict().items() if "mean" in k or "var" in k}
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 16, 16, dtype=torch.float64) * 10).sum().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(bool(m.calibrated) for m in model.modules() if isinstance(m, FrozenStatsNorm))


@settings(deadline=None, max_examples=40)
@given(
    n=st.integers(1, 20),
    dim=st.integers(1, 12),
    max_norm=st.floats(0.1, 10.0),
    scale=st.floats(1e-3, 1e4),
)
def test_one_example_changes_the_clipped_sum_by_at_most_the_clip(n, dim, max_norm, scale):
    g = torch.Generator().manual_seed(n * 31 + dim)
    data = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale
    extreme = torch.randn(1, dim, generator=g, dtype=torch.float64) * 1e6
    base = clip_rows(data, max_norm).sum(0)
    added = clip_rows(torch.cat([data, extreme]), max_norm).sum(0)
    replaced = clip_rows(torch.cat([data[:-1], extreme]), max_norm).sum(0)
    assert (added - base).norm() <= max_norm * (1 + 1e-9)
    assert (replaced - base).norm() <= 2 * max_norm * (1 + 1e-9)


@pytest.mark.parametrize(("sigma", "max_norm"), [(2.0, 1.0), (50.0, 0.3)])
def test_dp_statistics_carry_exactly_the_promised_gaussian_noise(sigma, max_norm):
    """Kolmogorov-Smirnov against N(0, (sigma * C)^2); a mechanism with less noise is rejected."""
    data = torch.randn(40, 6, dtype=torch.float64) * 3
    clean = clip_rows(data, max_norm).sum(0)
    g = torch.Generator().manual_seed(123)
    noise = torch.cat([gaussian_sum(data, max_norm, sigma, g) - clean for _ in range(400)])
    promised = sigma * max_norm
    assert stats.kstest(noise.numpy(), "norm", args=(0, promised)).pvalue > 1e-3
    assert stats.kstest(noise.numpy(), "norm", args=(0, 0.8 * promised)).pvalue < 1e-3


def test_private_dp_calibration_charges_one_gaussian_release_per_layer():
    model = model_with("dp_batch_norm[stats=private_dp,noise_multiplier=8.0]")
    charge = calibrate(
        model,
        lambda: [torch.randn(64, 3, 16, 16, dtype=torch.float64)],
        generator=torch.Generator().manual_seed(0),
    )
    layers = frozen_stats_layers(model)
    assert charge is not None
    assert (charge.noise_multiplier, charge.sample_rate, charge.steps) == (8.0, 1.0, len(layers))


def test_private_dp_statistics_estimate_the_true_moments():
    x = torch.rand(2000, 3, 8, 8, dtype=torch.float64) * 2
    layer = FrozenStatsNorm(3, stats="private_dp", noise_multiplier=5.0, clip=3.0).double()
    model = nn.Sequential(layer)
    calibrate(model, lambda: [x], generator=torch.Generator().manual_seed(0))
    true = per_example_moments(x).mean(0)
    noise_std = 5.0 * 3.0 * math.sqrt(6) / 2000
    assert (layer.mean - true[:3]).abs().max() < 5 * noise_std


def run_data(x: torch.Tensor, seed: int) -> RunData:
    """The private set ``x`` with this seed's named streams (as a run gives them)."""
    return RunData(
        private_x=x,
        public_x=None,
        to_input=lambda t: t,
        batch_size=16,
        generator=lambda purpose: stream(seed, f"norm.{purpose}"),
    )


def released_sum(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, float]:
    """A one-layer model's released (mean, second moment) vector times the public divisor k,
    i.e. the noisy clipped sum, and the layer's L2 bound on one example's contribution.

    The rate q = 0.9 and k = 45 are fixed (from a public N = 50), as the neighbouring relation
    of the accountant has them; `_prepare` derives both from N the same way for every run."""
    layer = FrozenStatsNorm(3, stats="private_dp", clip=0.1, noise_multiplier=0.001).double()
    charge = calibrate_private(
        nn.Sequential(layer), run_data(x, seed), sample_rate=0.9, expected_count=45
    )
    assert charge.history_entry() == (0.001, 0.9, 1)
    released = torch.cat([layer.mean, layer.var + layer.mean.square()]) * 45
    return released, layer.clip * math.sqrt(2 * 3)


@pytest.mark.parametrize("seed", range(6))
def test_private_dp_release_moves_by_at_most_the_clip_when_one_example_is_added(seed):
    """Add/remove neighbours (the relation the accountant assumes), with k close to N and a small
    clip: identical examples of mean -0.5 and one of mean +0.5, each clipped to the bound, so
    that a fixed-size subset, where adding the odd one out pushes another example out (a
    substitution), would move a release by about 1.8x the bound. The noise is the same stream
    on both sides, so it cancels in the difference."""
    base = torch.full((50, 3, 4, 4), -0.5, dtype=torch.float64)
    odd = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    without, bound = released_sum(base, seed)
    with_odd, _ = released_sum(torch.cat([base, odd]), seed)
    assert (with_odd - without).norm() <= bound * (1 + 1e-6)


def test_the_add_remove_check_sees_the_odd_example_when_it_is_sampled():
    """The check above is not vacuous: for most seeds the odd example is sampled and moves the
    release by nearly the whole bound."""
    base = torch.full((50, 3, 4, 4), -0.5, dtype=torch.float64)
    odd = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    moved = []
    for seed in range(6):
        without, bound = released_sum(base, seed)
        moved.append(float((released_sum(torch.cat([base, odd]), seed)[0] - without).norm()))
    assert sum(m > 0.9 * bound for m in moved) >= 3


def test_private_dp_charge_is_its_noise_at_the_poisson_rate_k_over_n_once_per_layer():
    norm = norms.resolve_norm("dp_batch_norm[calib_examples=100,stats=private_dp]")
    model = create_backbone("resnet9", norm=str(norm), width=0.125)
    layers = len(frozen_stats_layers(model))
    charge = norm.charge(model, 1000)
    assert (charge.noise_multiplier, charge.sample_rate, charge.steps) == (50.0, 0.1, layers)
    assert norm.charge(model, 60).sample_rate == 1.0  # k >= N: every example, every layer


def test_private_dp_divides_by_the_public_expected_count_not_the_sampled_one():
    """The size of a Poisson sample depends on the data; only k is public. With identical
    examples (no clipping, next to no noise) the released mean is then (sampled count / k) times
    the examples' mean: it varies with the sample, which dividing by the sampled count would hide
    (and an empty sample would make a division by zero)."""
    norm = norms.resolve_norm(
        "dp_batch_norm[calib_examples=20,clip=100.0,noise_multiplier=1e-06,stats=private_dp]"
    )
    x = torch.full((40, 3, 4, 4), 0.5, dtype=torch.float64)
    counts = []
    for seed in range(6):
        layer = FrozenStatsNorm(3, stats="private_dp", clip=100.0, noise_multiplier=1e-6).double()
        norm.prepare(nn.Sequential(layer), run_data(x, seed))
        counts.append(float(layer.mean[0]) * 20 / 0.5)
    assert all(abs(c - round(c)) < 0.05 for c in counts), counts
    assert len({round(c) for c in counts}) > 1, counts  # Binomial(40, 1/2) sample sizes


# --- stats=public,refresh=k: public statistics that follow the weights ----------------------

REFRESH = "dp_batch_norm[refresh=3,stats=public]"


def public_run_data(public: torch.Tensor, private: torch.Tensor | None = None) -> RunData:
    """A run's data with ``public`` as its public split (and, unless given, a private set that
    no statistic may read)."""
    return RunData(
        private_x=torch.full_like(public, float("nan")) if private is None else private,
        public_x=public,
        to_input=lambda t: t,
        batch_size=8,
        generator=lambda purpose: stream(0, f"norm.{purpose}"),
    )


def statistics(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in frozen_stats_layers(model) for t in (m.mean, m.var)]


def perturb_convolutions(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.add_(torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype) * 0.3)


def test_refresh_is_an_int_parameter_and_the_default_spec_strings_do_not_move():
    norm = norms.resolve_norm("dp_batch_norm[stats=public,refresh=5]")
    assert norm.params["refresh"] == 5 and isinstance(norm.params["refresh"], int)
    assert str(norm) == "dp_batch_norm[refresh=5,stats=public]"
    assert norms.resolve_norm(str(norm)) == norm
    for spec in ("dp_batch_norm[stats=public]", "dp_batch_norm[refresh=none,stats=public]"):
        assert str(norms.resolve_norm(spec)) == "dp_batch_norm[stats=public]"
    assert str(norms.resolve_norm("dp_batch_norm[stats=private_dp]")) == (
        "dp_batch_norm[stats=private_dp]"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("refresh=0,stats=public", r"refresh=0 is not allowed; allowed: none .* integer >= 1"),
        ("refresh=2.5,stats=public", r"refresh=2.5 is not allowed; allowed: none"),
        ("refresh=abc,stats=public", r"refresh must be a number or none, got 'abc'"),
        ("refresh=2,stats=private_dp", r"refresh=2 needs stats=public \(got stats=private_dp\)"),
        ("reference=0,refresh=2,stats=public", r"reference=0 is not allowed; allowed: an integer"),
        ("reference=64,stats=public", r"reference=64 is used only with refresh"),
    ],
)
def test_bad_refresh_parameters_are_refused_naming_what_is_allowed(params, message):
    with pytest.raises(NormSpecError, match=message):
        norms.create_norm(f"dp_batch_norm[{params}]", 8)


def test_the_reference_batch_is_spread_evenly_over_a_class_ordered_public_split():
    """An image folder's public split is stored class by class: the reference batch takes
    every class's share rather than the first class's examples."""
    labels = torch.arange(10).repeat_interleave(30)  # 300 public examples, sorted by class
    index = reference_indices(300, 50)
    assert index.tolist() == list(range(0, 300, 6))
    assert torch.bincount(labels[index]).tolist() == [5] * 10
    assert reference_indices(40, 256).tolist() == list(range(40))  # smaller split: all of it


@pytest.mark.parametrize("backbone", ["resnet9", "wrn16_4"])
def test_one_pass_refresh_equals_layer_by_layer_calibration_on_the_reference_batch(backbone):
    torch.manual_seed(0)
    model = create_backbone(backbone, norm=REFRESH, width=0.125).double()
    reference = torch.randn(24, 3, 8, 8, dtype=torch.float64) * 2 + 0.5
    one_pass, layered = copy.deepcopy(model), copy.deepcopy(model)
    passes: list[int] = []
    one_pass.register_forward_pre_hook(lambda _m, _a: passes.append(1))
    refresh_statistics(one_pass, reference)
    calibrate(layered, lambda: reference.split(8))
    assert len(passes) == 1  # one forward pass, not one per layer
    initial, refreshed = statistics(model), statistics(one_pass)
    assert refreshed and all(not torch.equal(a, b) for a, b in zip(initial, refreshed, strict=True))
    for got, expected in zip(statistics(one_pass), statistics(layered), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert one_pass.training  # the mode is restored


def test_refreshed_statistics_follow_the_weights_through_on_step():
    norm = norms.resolve_norm(REFRESH)
    model = model_with(str(norm))
    data = public_run_data(torch.randn(40, 3, 16, 16, dtype=torch.float64))
    norm.prepare(model, data)
    prepared = statistics(model)
    perturb_convolutions(model)
    norm.on_step(model, data, 2)  # not a refresh step: the statistics stay
    assert all(torch.equal(a, b) for a, b in zip(prepared, statistics(model), strict=True))
    norm.on_step(model, data, 3)
    refreshed = statistics(model)
    assert all(not torch.equal(a, b) for a, b in zip(prepared, refreshed, strict=True))
    expected = copy.deepcopy(model)
    calibrate(expected, data.batches(data.public_x))  # same weights, same 40 public examples
    for got, want in zip(refreshed, statistics(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", norms.get_norm("dp_batch_norm").grad_sample_modes)
def test_refreshed_statistics_keep_per_sample_gradients_exact_and_examples_unmixed(mode):
    """The registry's oracle sweeps (tests/test_dp_guarantees.py) take stats=public, whose
    layers refresh=k shares; here the same oracles run on statistics refreshed after the
    weights moved."""
    norm = norms.resolve_norm("dp_batch_norm[refresh=1,stats=public]")
    model = model_with(str(norm))
    data = public_run_data(torch.randn(16, 3, 16, 16, dtype=torch.float64))
    norm.prepare(model, data)
    perturb_convolutions(model)
    norm.on_step(model, data, 1)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    assert grad_sample_mismatches(model, x[:3], mode) == []
    assert mixing_examples(model, x, j=2) == []


def test_refresh_runs_one_pass_at_steps_k_2k_and_no_other():
    norm = norms.resolve_norm(REFRESH)
    model = model_with(str(norm))
    data = public_run_data(torch.randn(16, 3, 16, 16, dtype=torch.float64))
    norm.prepare(model, data)
    passes: list[int] = []
    step = [0]
    model.register_forward_pre_hook(lambda _m, _a: passes.append(step[0]))
    for step[0] in range(10):
        norm.on_step(model, data, step[0])
    assert passes == [3, 6, 9]
    default = norms.resolve_norm("dp_batch_norm[stats=public]")
    for s in range(5):
        default.on_step(model, data, s)  # without refresh: never
    assert passes == [3, 6, 9]


def test_refreshed_statistics_never_read_a_private_example():
    """A private set of NaN and 1e30 values would poison any statistic that read it."""
    norm = norms.resolve_norm("dp_batch_norm[reference=12,refresh=1,stats=public]")
    public = torch.randn(30, 3, 16, 16, dtype=torch.float64)
    poisoned = torch.full((50, 3, 16, 16), float("nan"), dtype=torch.float64)
    poisoned[::2] = 1e30
    results = []
    for private in (poisoned, torch.randn(50, 3, 16, 16, dtype=torch.float64)):
        model = model_with(str(norm))
        data = public_run_data(public, private)
        norm.prepare(model, data)
        perturb_convolutions(model)
        norm.on_step(model, data, 1)
        results.append(statistics(model))
    assert all(torch.isfinite(t).all() for t in results[0])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_refresh_reports_no_privacy_cost_and_charges_nothing():
    norm = norms.resolve_norm(REFRESH)
    model = model_with(str(norm))
    assert norm.dp_status == "public data" and norm.charge(model, 1000) is None
    assert norm.dp_note == (
        "statistics of a fixed public reference batch of 256 examples (the whole public split "
        "if smaller), recomputed every 3 steps with the current weights: no privacy cost"
    )


REFRESH_CELL = ['grid.norm=["dp_batch_norm[refresh=2,stats=public]"]', "grid.seed=[0]"]


def test_a_run_with_refresh_trains_and_its_record_says_there_is_no_privacy_cost(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    run_suite(
        load_suite(suite, [*REFRESH_CELL, "training.steps=4"]),
        RunOptions(out_dir=out, report=False, progress=False),
    )
    (record,) = read_records(out / "records.jsonl").records
    assert record["status"] == "ok", record.get("error")
    assert record["norm"] == "dp_batch_norm[refresh=2,stats=public]"
    assert record["norm_dp_status"] == "public data"
    assert "recomputed every 2 steps" in record["norm_dp_note"]
    assert record["norm_dp_note"].endswith("no privacy cost")
    assert record["privacy_charges"] == []
    assert "the norm's per-step hook" in record["nonprivate_measure"]


def test_a_resumed_run_with_refresh_ends_with_the_uninterrupted_record(tmp_path):
    """Checkpoint after step 3, where the statistics are step 2's refresh and step 3 does not
    refresh: the resumed run goes on with the checkpoint's statistics, not recomputed ones."""
    c = cell(
        tmp_path, *REFRESH_CELL, "training.checkpoint_every=3", "training.log_private_loss=true"
    )
    whole = train_cell(c, torch.device("cpu"))
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(Killed):
        train_cell(c, torch.device("cpu"), progress=kill_at(4), checkpoint_dir=ckpts)
    resumed = train_cell(c, torch.device("cpu"), checkpoint_dir=ckpts)
    assert resumed["resumed_from_step"] == 3
    assert comparable(resumed) == comparable(whole)
