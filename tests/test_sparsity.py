"""Pre-pruning and gradient dropping: masked coordinates get no gradient, no noise, no update;
the kept ones are clipped exactly; the choice of coordinates never reads private data."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from bench.backbones import list_backbones
from bench.cli import main
from bench.config import GradDropConfig, PruneConfig
from bench.errors import ConfigError
from bench.results.record import grid_value_text
from bench.seeds import stream
from bench.sparsity import PublicData, Sparsity, prunable_layers
from bench.suite import load_suite
from bench.train import data_cache
from bench.train.cell import train_cell
from bench.train.setup import setup_run
from bkclip import ClipRuleError, DPSGDStep, make_optimizer
from bkclip.rules import GroupNormRule
from tests.dp_cases import NORM_VARIANTS, SIZE, WIDTH
from tests.dp_oracles import prepared_backbone
from tests.resume_tools import Killed, cell, comparable, kill_at
from tests.tiny_suite import TINY

CPU = torch.device("cpu")
MODES = ("bk", "hooks", "functorch")


def sparsity(
    model, prune=0.5, drop=0.5, seed=0, prune_method="random", drop_method="random", public=None
):
    public_refresh = {"refresh": 2} if drop_method == "public" else {}
    return Sparsity(
        model,
        prune=PruneConfig(prune, prune_method) if prune is not None else None,
        drop=None if drop is None else GradDropConfig(drop, drop_method, **public_refresh),
        streams=lambda purpose: stream(seed, purpose),
        public=public,
    )


def dp_step(model, sp, mode, *, sigma=0.0, clip=1.0, batch=3, optimizer=None):
    opt = optimizer or make_optimizer(model.parameters(), lr=1.0)
    return DPSGDStep(
        model,
        opt,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        max_physical_batch=2,  # two physical batches: accumulation across them is covered
        mode=mode,
        sparsity=sp,
    )


def masked_oracle(model, masks, x, y, clip):
    """Each example alone (its views' mean loss), its gradient restricted to the kept
    coordinates, clipped on that restriction, summed; and each example's restricted norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for xi, yi in zip(x, y, strict=True):
        loss = F.cross_entropy(model(xi), yi.repeat(xi.shape[0]))
        grads = [g * m for g, m in zip(torch.autograd.grad(loss, params), masks, strict=True)]
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        norms.append(norm)
        factor = (clip / (norm + 1e-6)).clamp(max=1.0)
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    return total, torch.stack(norms)


def current_masks(model, sp):
    params = [p for p in model.parameters() if p.requires_grad]
    return [m if (m := sp.coordinate_mask(p)) is not None else torch.ones_like(p) for p in params]


def clipped_sum(model, mode, x, y, clip, seed=0):
    """One noiseless step with lr 1 on a pruned and dropped ``model``: the clipped sum is
    (old - new) * B; with the masks the step used and the pruned model before the step."""
    sp = sparsity(model, seed=seed)
    before_model = copy.deepcopy(model)
    step = dp_step(model, sp, mode, clip=clip, batch=x.shape[0])
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    step(x, y)
    sums = [(b - p.detach()) * x.shape[0] for b, p in zip(before, params, strict=True)]
    return sums, current_masks(model, sp), before_model


# Every norm's layers on the two cheapest backbones (the rules' channel dimensions), every
# backbone's own layers (stems, WS and KernelNorm convs) with two norms, Opacus' paths on two.
CHEAP = ("resnet9", "wrn16_4")
CASES = [
    pytest.param(b, n, mode, id=f"{b}-{n}-{mode}")
    for b in sorted(list_backbones())
    for n in NORM_VARIANTS
    for mode in MODES
    if (mode == "bk" and (b in CHEAP or n in NORM_VARIANTS[:2] or n.startswith("kernel_norm")))
    or (mode != "bk" and b in CHEAP and n in NORM_VARIANTS[:2])
]


@pytest.mark.parametrize(("backbone", "norm", "mode"), CASES)
def test_kept_coordinates_are_clipped_like_the_one_example_oracle_restricted_to_them(
    backbone, norm, mode
):
    model = prepared_backbone(backbone, norm, width=WIDTH, size=SIZE)
    x = torch.randn(3, 2, 3, SIZE, SIZE, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    # The same seed makes the same masks: a first pass finds the masked norms, for a clip
    # bound at their median (some examples clipped, some not).
    _, masks, pruned = clipped_sum(copy.deepcopy(model), mode, x, y, clip=1e9)
    _, norms = masked_oracle(pruned, masks, x, y, clip=1e9)
    clip = float(norms.median())
    sums, masks, pruned = clipped_sum(model, mode, x, y, clip)
    expected, _ = masked_oracle(pruned, masks, x, y, clip)
    for got, want, mask in zip(sums, expected, masks, strict=True):
        torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-6)
        assert torch.all(got[mask == 0] == 0)
    assert any(bool((m == 0).any()) for m in masks)  # something was masked


@pytest.mark.parametrize("mode", MODES)
def test_one_example_moves_the_masked_clipped_sum_by_at_most_c(mode):
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, SIZE, SIZE, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 5, 9])
    base = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE)
    with_all, _, _ = clipped_sum(copy.deepcopy(base), mode, x, y, clip=0.5)
    without, _, _ = clipped_sum(copy.deepcopy(base), mode, x[1:], y[1:], clip=0.5)
    diff = torch.sqrt(sum((a - b).square().sum() for a, b in zip(with_all, without, strict=True)))
    assert diff <= 0.5 * (1 + 1e-6)


@pytest.mark.parametrize(
    ("mode", "optimizer"), [("bk", "sgd"), ("bk", "adam"), ("hooks", "sgd"), ("functorch", "adam")]
)
def test_pruned_weights_stay_exactly_zero_and_dropped_channels_are_not_updated(mode, optimizer):
    torch.manual_seed(0)
    model = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE, dtype=torch.float32)
    sp = sparsity(model, prune=0.6, drop=0.5)
    momentum = 0.9 if optimizer == "sgd" else 0.0
    opt = make_optimizer(
        model.parameters(), optimizer=optimizer, lr=0.5, momentum=momentum, weight_decay=1e-2
    )
    step = dp_step(model, sp, mode, sigma=2.0, batch=4, optimizer=opt)
    layers = dict(model.named_modules())
    for name, rate in sp.prune_layers.items():  # the realised rate is round(rate * n) / n
        n = layers[name].weight.numel()
        assert rate == pytest.approx(round(0.6 * n) / n)
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(6):  # noisy steps with momentum, weight decay and 2 views; one is empty
        before = [p.detach().clone() for p in params]
        n = 0 if i == 3 else 4  # an empty Poisson batch: a noise-only step
        step(torch.randn(n, 2, 3, SIZE, SIZE), torch.randint(0, 10, (n,)))
        for p, old in zip(params, before, strict=True):
            mask = sp.coordinate_mask(p)
            if mask is not None:
                assert torch.equal(p.detach()[mask == 0], old[mask == 0])
                assert not torch.equal(p.detach()[mask == 1], old[mask == 1])
                assert torch.all(p.grad[mask == 0] == 0)  # no noise there
    for name, layer in prunable_layers(model)[0]:
        mask = sp.pruned[id(layer.weight)]
        assert torch.all(layer.weight[~mask] == 0), name


def test_the_stem_and_the_classifier_are_left_whole():
    model = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE)
    pruned, whole = prunable_layers(model)
    assert whole == ["features.0.0.0", "fc"]
    assert "fc" not in dict(pruned)


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_prune_masks_follow_their_method(method):
    model = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    sp = sparsity(model, prune=0.5, drop=None, prune_method=method)
    for name, layer in prunable_layers(model)[0]:
        mask, w = sp.pruned[id(layer.weight)], initial[f"{name}.weight"].abs()
        if method == "magnitude":
            assert w[~mask].max() <= w[mask].min()
    other = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE)
    again = sparsity(other, prune=0.5, drop=None, prune_method=method, seed=1)
    same = all(
        torch.equal(sp.pruned[id(a.weight)], again.pruned[id(b.weight)])
        for (_, a), (_, b) in zip(prunable_layers(model)[0], prunable_layers(other)[0], strict=True)
    )
    assert same == (method == "magnitude")  # random masks differ between seeds


def tiny_cell(tmp_path, *overrides):
    return cell(tmp_path, "training.steps=4", *overrides)


def poisoned(dataset):
    """The same dataset with other private images and labels (public and test kept)."""
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, 256, dataset.train_x.shape, generator=g, dtype=dataset.train_x.dtype)
    y = torch.randint(0, int(dataset.train_y.max()) + 1, dataset.train_y.shape, generator=g)
    return dataclasses.replace(dataset, train_x=x, train_y=y.to(dataset.train_y.dtype))


def choices(run, steps=4):
    """The pruned masks and the kept channels of the first steps, as the run would make them."""
    out = [m.clone() for m in run.sparsity.pruned.values()]
    for step in range(steps):
        run.sparsity.begin_step(step)
        out += [k.clone() for k in run.sparsity.keep.values()]
    return out


@pytest.mark.parametrize(
    ("prune", "drop", "norm"),
    [
        ("snip_public", "public", "group_norm"),
        ("random", "random", "group_norm"),
        ("magnitude", "random", "group_norm"),
        # The norm's DP statistics read private data after the pruning mask is chosen. (A
        # public drop choice would read the model with those statistics: post-processing of
        # a DP release, paid in the budget, but not equal across private sets.)
        ("snip_public", "random", "dp_batch_norm[stats=private_dp]"),
    ],
)
def test_the_choice_reads_no_private_data_and_moves_with_the_seed(
    tmp_path, monkeypatch, prune, drop, norm
):
    public = ", refresh: 2, public_examples: 16" if drop == "public" else ""
    overrides = [
        f"training.pre_prune={{rate: 0.5, method: {prune}}}",
        f"training.grad_drop={{rate: 0.5, method: {drop}{public}}}",
        f"grid.norm=[{norm!r}]",
    ]
    c = tiny_cell(tmp_path, *overrides)
    clean = choices(setup_run(c, CPU))
    real = data_cache.cached_dataset
    monkeypatch.setattr(data_cache, "cached_dataset", lambda cfg: poisoned(real(cfg)))
    dirty = choices(setup_run(c, CPU))
    assert len(clean) == len(dirty) and all(
        torch.equal(a, b) for a, b in zip(clean, dirty, strict=True)
    )
    monkeypatch.setattr(data_cache, "cached_dataset", real)
    other = choices(setup_run(dataclasses.replace(c, seed=1), CPU))
    assert not all(torch.equal(a, b) for a, b in zip(clean, other, strict=True))


def test_a_pruned_and_dropped_run_records_what_it_trained_and_resumes_bit_identically(tmp_path):
    c = tiny_cell(
        tmp_path,
        "training.pre_prune={rate: 0.8, method: snip_public}",
        "training.grad_drop={rate: 0.5, method: public, refresh: 3, public_examples: 16}",
        "training.momentum=0.9",
        "training.augmult=2",
    )
    whole = train_cell(c, CPU)
    s = whole["sparsity"]
    assert s["reads_private_data"] is False
    assert s["trainable_coordinates"] < 0.3 * s["total_coordinates"]
    assert s["pre_prune"]["realised_rate_min"] == pytest.approx(0.8, abs=0.01)
    assert s["pre_prune"]["layers_whole"] and s["grad_drop"]["refresh"] == 3
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(Killed):  # killed after the checkpoint of step 2
        train_cell(c, CPU, progress=kill_at(3), checkpoint_dir=ckpts)
    resumed = train_cell(c, CPU, checkpoint_dir=ckpts)
    assert resumed["resumed_from_step"] == 2
    assert comparable(resumed) == comparable(whole)


@pytest.mark.parametrize("mode", ["hooks", "bk"])
def test_a_random_drop_resumes_on_the_same_channels(tmp_path, mode):
    """The grad_drop stream is checkpointed: the resumed run drops what it would have."""
    c = tiny_cell(
        tmp_path,
        "training.grad_drop={rate: 0.5}",
        "training.pre_prune={rate: 0.5, method: magnitude}",
        f"training.grad_sample_mode={mode}",
    )
    whole = train_cell(c, CPU)
    ckpts = tmp_path / "checkpoints"
    with pytest.raises(Killed):
        train_cell(c, CPU, progress=kill_at(3), checkpoint_dir=ckpts)
    resumed = train_cell(c, CPU, checkpoint_dir=ckpts)
    assert resumed["resumed_from_step"] == 2 and comparable(resumed) == comparable(whole)


def test_a_resumed_run_takes_its_pruning_masks_from_the_checkpoint(tmp_path):
    c = tiny_cell(tmp_path, "training.pre_prune={rate: 0.5, method: snip_public}")
    run = setup_run(c, CPU)
    state = run.sparsity.state_dict()
    other = {k: ~m for k, m in run.sparsity.pruned.items()}  # as if recomputed differently
    run.sparsity.pruned = other
    run.sparsity.load_state_dict(state)
    saved = [m for m in state["pruned"] if m is not None]
    assert all(torch.equal(a, b) for a, b in zip(run.sparsity.pruned.values(), saved, strict=True))


def test_a_rule_whose_channel_dim_does_not_match_the_parameters_is_refused(monkeypatch):
    monkeypatch.setattr(GroupNormRule, "channel_dim", lambda self, layer, g: 2)
    model = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE)
    step = dp_step(model, sparsity(model, prune=None, drop=0.5), "bk")
    with pytest.raises(ClipRuleError, match="channel_dim 2"):
        step(torch.randn(3, 1, 3, SIZE, SIZE, dtype=torch.float64), torch.tensor([1, 2, 3]))


def test_no_sparsity_is_the_old_run(tmp_path):
    """Runs without the options keep their run key and record no sparsity."""
    plain = tiny_cell(tmp_path)
    assert train_cell(plain, CPU)["sparsity"] is None
    assert plain.run_key == tiny_cell(tmp_path, "training.pre_prune=null").run_key
    assert plain.run_key != tiny_cell(tmp_path, "training.pre_prune={rate: 0.5}").run_key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.pre_prune={rate: 1.0}", "training.pre_prune.rate: must be in [0, 1)"),
        ("training.pre_prune={rate: 0.5, method: lottery}", "training.pre_prune.method"),
        ("training.pre_prune={method: random}", "training.pre_prune.rate: is required"),
        ("training.pre_prune={rate: 0.5, sparsity: 2}", "training.pre_prune.sparsity: unknown"),
        ("training.pre_prune=0.5", "training.pre_prune: must be a mapping"),
        ("training.grad_drop={rate: -0.1}", "training.grad_drop.rate: must be in [0, 1)"),
        ("training.grad_drop={rate: 0.5, method: top}", "training.grad_drop.method"),
        ("training.grad_drop={rate: 0.5, refresh: 0}", "training.grad_drop.refresh"),
        (
            "training.grad_drop={rate: 0.5, refresh: 5}",
            "training.grad_drop.refresh: is read by method public only",
        ),
        (
            "training.pre_prune={rate: 0.5, method: snip_public}",
            "training.pre_prune.method: reads public data but data.public_split is 0",
        ),
        (
            "training.grad_drop={rate: 0.5, method: public}",
            "training.grad_drop.method: reads public data but data.public_split is 0",
        ),
    ],
)
def test_bad_sparsity_options_are_one_line_and_exit_2(tmp_path, capsys, override, message):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY.replace(", public_split: 32", ""))
    with pytest.raises(ConfigError):
        load_suite(suite, [override])
    code = main(["run", str(suite), "--set", override, "--dry-run", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err.replace(" (from --set)", ""), err
    assert not (tmp_path / "o").exists()


def test_drop_needs_layers_whose_parameters_share_their_first_dimension():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.ones(3))
            self.b = torch.nn.Parameter(torch.ones(2))

    model.add_module("odd", Odd())
    with pytest.raises(ConfigError, match="first dimensions"):
        sparsity(model, prune=None, drop=0.5)


def test_public_saliency_keeps_the_channels_with_the_largest_public_gradient():
    model = prepared_backbone("resnet9", "group_norm", width=WIDTH, size=SIZE, dtype=torch.float32)
    x = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8)
    public = PublicData(x, torch.arange(8) % 10, lambda t: t.float() / 255, 4)
    sp = sparsity(model, prune=None, drop=0.5, drop_method="public", public=public)
    sp.begin_step(0)
    fc = model.fc
    loss = F.cross_entropy(model(x.float() / 255), public.y)
    gw, gb = torch.autograd.grad(loss, [fc.weight, fc.bias])
    score = gw.square().sum(1) + gb.square()
    keep = sp.channel_keep(fc)
    assert keep.sum() == 10 - 5
    assert score[keep == 1].min() >= score[keep == 0].max()
    first = {k: v.clone() for k, v in sp.keep.items()}
    sp.begin_step(1)  # refresh=2: the same choice until step 2
    assert all(torch.equal(first[k], v) for k, v in sp.keep.items())


def test_a_swept_option_reads_the_same_in_progress_lines_and_leaderboard_titles():
    for option in (PruneConfig(0.5), GradDropConfig(0.5), GradDropConfig(0.25, "public", 5, 64)):
        assert grid_value_text(option) == grid_value_text(dataclasses.asdict(option))
    assert grid_value_text(None) == "none"
    assert grid_value_text({"rate": 0.8, "method": "magnitude"}) == "magnitude:0.8"


def test_a_pruning_sweep_gets_one_titled_table_per_setting(tmp_path):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    out = tmp_path / "out"
    sets = ["grid.seed=[0]", "grid.norm=[group_norm]", "training.measure_nonprivate=false"]
    sets.append("grid.training.pre_prune=[null, {rate: 0.5, method: random}]")
    args = ["run", str(suite), "--out", str(out), "--no-progress"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    board = (out / "leaderboard.md").read_text()
    assert "[training.pre_prune=none]" in board and "[training.pre_prune=random:0.5]" in board
    assert "have no record" not in board
