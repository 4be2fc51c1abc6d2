"""A norm brought by a user is one file: its layer, grad sampler and clipping rule, registered here.

Nothing under ``bench/`` or ``norms/`` knows this norm. Once registered it builds in every
backbone, passes the batch-independence, per-sample-gradient and book-keeping oracles, trains
through `run_suite` and appears in the leaderboard; a package can bring it through the
``dp_norm_bench.norms`` entry-point group instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from opacus.grad_sample import GradSampleModule, register_grad_sampler
from torch import nn

import bkclip.rule as rule_registry
import norms
import norms.clipping as clipping
import norms.registry as registry
from bench.backbones import create_backbone, list_backbones
from bench.results.records import read_records
from bench.suite import load_suite
from bench.sweep.options import RunOptions
from bench.sweep.run import run_suite
from bkclip import BookKeepingClipper, ClipRuleError
from norms.clipping import ClipRule, per_example, register_clip_rule
from norms.errors import NormPluginError
from tests.bk_cases import assert_clipped_sums_match_the_oracle
from tests.dp_cases import SIZE, WIDTH
from tests.dp_oracles import grad_sample_mismatches, mixing_examples

ROOT = Path(__file__).resolve().parents[1]


class PixelRMSNorm(nn.Module):
    """``x / sqrt(mean_c x^2 + eps) * gain``: RMS over the channels at each pixel, per sample."""

    def __init__(self, num_channels: int, *, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalised(x) * self.gain.view(1, -1, 1, 1)


def pixel_rms_grad_sample(layer: PixelRMSNorm, activations, backprops):
    """Opacus grad sampler: the gain's per-sample gradient sums x_hat * g over the pixels."""
    return {layer.gain: (layer.normalised(activations[0]) * backprops).sum(dim=(2, 3))}


class PixelRMSClipRule(ClipRule):
    """Book-keeping rule: per-view gain gradients are C numbers each, so keep them all."""

    def releases(self, state, inputs, g):
        return True

    def norm_sq(self, layer, inputs, g, strategy, state, output):
        per_view = (layer.normalised(inputs[0].to(g.dtype)) * g).sum(dim=(2, 3))
        state.per_view = {layer.gain: per_view}
        return per_example(per_view, state.n).sum(1).square().sum(-1)

    def clipped_sum(self, layer, inputs, g, coef, state):
        return {p: coef @ v for p, v in state.per_view.items()}


class UnruledNorm(PixelRMSNorm):
    """The same layer under another class, given no clipping rule."""


@pytest.fixture
def restore_registries():
    """Undo every registration a test makes: norms, clipping rules, Opacus grad samplers."""
    saved = (
        dict(registry._REGISTRY),
        dict(rule_registry._RULES),
        set(rule_registry._FALLBACKS),
        dict(GradSampleModule.GRAD_SAMPLERS),
        set(registry._PLUGINS_LOADED),
    )
    yield
    for live, old in zip(
        (
            registry._REGISTRY,
            rule_registry._RULES,
            rule_registry._FALLBACKS,
            GradSampleModule.GRAD_SAMPLERS,
            registry._PLUGINS_LOADED,
        ),
        saved,
        strict=True,
    ):
        live.clear()
        live.update(old)


@pytest.fixture
def pixel_rms(restore_registries) -> str:
    """The user's file: register the layer's grad sampler, its clipping rule and the norm."""
    register_grad_sampler(PixelRMSNorm)(pixel_rms_grad_sample)
    register_clip_rule(PixelRMSNorm)(PixelRMSClipRule)

    @norms.register_norm("pixel_rms", grad_sampler="custom")
    def pixel_rms(num_channels: int, *, eps: float = 1e-5, device=None, dtype=None):
        """Per-pixel RMS normalisation over channels with a learnable gain."""
        return PixelRMSNorm(num_channels, eps=eps, device=device, dtype=dtype)

    return "pixel_rms"


def build(backbone: str, norm: str) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(backbone, norm=norm, width=WIDTH).double()


def test_a_registered_norm_builds_in_every_backbone_and_uses_its_layer(pixel_rms):
    for backbone in list_backbones():
        model = build(backbone, pixel_rms)
        assert any(isinstance(m, PixelRMSNorm) for m in model.modules()), backbone
        out = model(torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64))
        assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", sorted(list_backbones()))
def test_a_registered_norm_passes_every_dp_oracle(pixel_rms, backbone):
    model = build(backbone, pixel_rms)
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    assert grad_sample_mismatches(model, x, "hooks") == []
    assert mixing_examples(model, torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64), j=2) == []
    assert_clipped_sums_match_the_oracle(model, 2, "auto")
    assert BookKeepingClipper(model).fallback_classes == []


class _ForgetsToNormalise(PixelRMSClipRule):
    def norm_sq(self, layer, inputs, g, strategy, state, output):
        per_view = (inputs[0].to(g.dtype) * g).sum(dim=(2, 3))
        state.per_view = {layer.gain: per_view}
        return per_example(per_view, state.n).sum(1).square().sum(-1)


def test_the_book_keeping_oracle_catches_a_wrong_plugin_rule(pixel_rms, monkeypatch):
    monkeypatch.setitem(rule_registry._RULES, PixelRMSNorm, _ForgetsToNormalise())
    with pytest.raises(AssertionError):
        assert_clipped_sums_match_the_oracle(build("resnet9", pixel_rms), 1, "auto")


def test_a_trainable_layer_without_a_rule_is_refused_by_name(restore_registries):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), UnruledNorm(4), nn.Flatten(), nn.Linear(144, 2))
    with pytest.raises(ClipRuleError, match="UnruledNorm has trainable parameters but no"):
        BookKeepingClipper(model)


def test_a_class_opted_into_the_fallback_is_materialised_and_named(restore_registries):
    clipping.register_clip_fallback(UnruledNorm)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), UnruledNorm(4), nn.Flatten(), nn.Linear(4 * SIZE**2, 10)
    ).double()
    with torch.no_grad():
        model[1].gain.uniform_(0.5, 1.5)
    assert BookKeepingClipper(model).fallback_classes == ["UnruledNorm"]
    assert_clipped_sums_match_the_oracle(model, 2, "auto")  # through Opacus' functorch path


def test_a_registered_norm_trains_through_the_runner_and_reaches_the_leaderboard(
    pixel_rms, tmp_path
):
    suite_file = tmp_path / "plugin.yaml"
    suite_file.write_text(
        textwrap.dedent(
            f"""\
            name: plugin
            data: {{source: synthetic, num_train: 256, num_test: 64, image_size: {SIZE}}}
            privacy: {{epsilon: 8.0, delta: 1.0e-3, accountant: rdp}}
            training:
              batch_size: 64
              max_physical_batch: 32
              steps: 3
              crop_padding: 2
              eval_batch_size: 64
              throughput_warmup_steps: 1
              throughput_steps: 1
            grid:
              backbone: ["resnet9[width={WIDTH}]"]
              norm: [group_norm, {pixel_rms}]
              seed: [0, 1]
            """
        )
    )
    out = tmp_path / "out"
    summary = run_suite(load_suite(suite_file), RunOptions(out_dir=out, progress=False))
    assert summary.statuses == {"ok": 4}
    records = read_records(out / "records.jsonl").records
    mine = [r for r in records if r["norm"] == pixel_rms]
    assert len(mine) == 2
    assert all(r["grad_sample_paths"]["PixelRMSNorm"] == "bk" for r in mine)
    assert all(r["epsilon_spent"] <= 8.0 for r in mine)
    board = (out / "leaderboard.md").read_text()
    assert f"`{pixel_rms}`" in board


def _plugin_tree(root: Path, module: str, body: str) -> None:
    """A distribution as installed: a module and a dist-info with an entry point to it."""
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nmine = {module}\n")


PLUGIN = '''\
    """A norm shipped by another package: instance norm as GroupNorm with one channel a group."""
    from torch import nn

    from norms import register_norm


    @register_norm("plugin_instance_norm")
    def plugin_instance_norm(num_channels, *, eps=1e-5, device=None, dtype=None):
        """InstanceNorm with affine (GroupNorm with a group per channel)."""
        return nn.GroupNorm(num_channels, num_channels, eps=eps, device=device, dtype=dtype)
'''


def test_an_entry_point_brings_a_norm_into_suites_and_the_listing(
    restore_registries, tmp_path, monkeypatch
):
    _plugin_tree(tmp_path, "dpnb_test_plugin", PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin_instance_norm" in norms.list_norms()
    suite = load_suite(
        ROOT / "suites" / "smoke.yaml", ['grid.norm=["plugin_instance_norm"]', "grid.seed=[0]"]
    )
    assert [c.norm for c in suite.cells()] == ["plugin_instance_norm"]
    # and for a user: `python -m bench list` in a process where the package is importable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    listing = subprocess.run(
        [sys.executable, "-m", "bench", "list"], env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr
    assert "plugin_instance_norm" in listing.stdout


def test_a_broken_entry_point_is_one_clear_error(restore_registries, tmp_path, monkeypatch):
    _plugin_tree(tmp_path, "dpnb_broken_plugin", "raise ImportError('missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NormPluginError, match=r"'mine' \(dpnb_broken_plugin.*missing dependency"):
        norms.load_plugins()
