"""pytest-benchmark perf checks: DP and non-private steps, per-sample-gradient layers, data path.

Run timed with ``pytest --benchmark-only tests/perf`` (a few minutes on 2 CPU cores); CI runs
them once each, at the smallest sizes, with ``--benchmark-disable`` so they are checked, not
timed. Each timed call
synchronises the device before it returns; one warm-up round is excluded. On a GPU the same
files take larger sizes. Throughput and peak memory go to ``extra_info``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from timm.layers import ScaledStdConv2d
from torch import nn

import norms
from bench.backbones import create_backbone, list_backbones
from bench.config import GradDropConfig, PruneConfig, TrainingConfig
from bench.measure import (
    peak_memory,
    reset_peak_memory,
    resolve_device,
    synchronize,
    tensor_peak_bytes,
)
from bench.perf import KINDS, make_step, measure_one, random_device_data
from bench.provenance import device_name
from bench.seeds import stream
from bench.sparsity import Sparsity
from bench.train.setup import build_dp_step
from bkclip import layer_norms
from norms.frozen_stats import ChannelAffine
from norms.kernel_norm import KNConv2d, knconv2d_unfold_reference, knconv_grad_sample, window_stats
from tests.dp_oracles import norms_of, per_example_grads

DEVICE = resolve_device()
ON_GPU = DEVICE.type == "cuda"


@dataclass(frozen=True)
class Sizes:
    batch: int
    width: float
    rounds: int


@pytest.fixture(scope="session")
def sizes(pytestconfig) -> Sizes:
    """Timed: sizes whose ratios mean something (the whole CPU run takes a few minutes).
    Untimed (``--benchmark-disable``, as in CI): the smallest sizes that still run every path."""
    if ON_GPU:
        return Sizes(batch=256, width=1.0, rounds=5)
    if pytestconfig.getoption("benchmark_disable"):
        return Sizes(batch=8, width=0.25, rounds=1)
    return Sizes(batch=32, width=0.5, rounds=3)


def _measure(benchmark, sizes: Sizes, images: int, call, *, memory: bool = True) -> None:
    """Run ``call`` under the benchmark (one untimed warm-up round) and put its throughput and
    peak memory in the benchmark's extra_info.

    Throughput: over the timed rounds, or, untimed (``--benchmark-disable``, where the fixture
    calls ``call`` once), over that one call (``call`` synchronises the device). On a GPU the
    peak is CUDA's allocator peak over the calls; on the CPU it is the tensor peak of one more,
    untimed call (`bench.measure.TensorPeak`), taken when ``memory``.
    """
    last_s: list[float] = []

    def timed():
        started = time.perf_counter()
        call()
        last_s.append(time.perf_counter() - started)

    benchmark.pedantic(timed, rounds=sizes.rounds, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    mean = stats.stats.mean if stats is not None else last_s[-1]
    peak = peak_memory(DEVICE)
    if peak is None and memory:
        peak = tensor_peak_bytes(call)
    benchmark.extra_info.update(
        device=device_name(DEVICE),
        images_per_call=images,
        throughput_img_s=images / mean,
        peak_mem_bytes=peak,
    )
    assert math.isfinite(benchmark.extra_info["throughput_img_s"])
    assert benchmark.extra_info["throughput_img_s"] > 0


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _trained_model(step) -> nn.Module:
    """The plain model a step trains (a DP step wraps it; `module` is the plain one)."""
    return getattr(step, "module", None) or step.model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("norm", norms.list_norms())
@pytest.mark.parametrize("backbone", list_backbones())
def test_training_step(benchmark, sizes, backbone, norm, kind):
    """One training step of each kind (`bench.perf.KINDS`: non-private, book-keeping, Opacus
    hooks, Opacus ghost clipping); the non-private step shares the group of its DP steps."""
    benchmark.group = f"step {backbone} {norm} batch={sizes.batch} width={sizes.width}"
    step, x, y = make_step(
        backbone, norm, kind, batch=sizes.batch, width=sizes.width, device=DEVICE
    )

    def call():
        step(x, y)
        synchronize(DEVICE)

    reset_peak_memory(DEVICE)
    _measure(benchmark, sizes, sizes.batch, call)
    # A step holds at least a gradient per parameter beside its activations.
    assert benchmark.extra_info["peak_mem_bytes"] > _parameter_bytes(_trained_model(step))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "nonprivate"])
def test_a_dp_step_costs_a_bounded_multiple_of_the_nonprivate_step(benchmark, sizes, kind):
    """The DP/non-DP step-time ratio of resnet9 with group_norm, below a generous bound: a
    per-sample-gradient path that went quadratic (or fell back where it should not) fails."""
    benchmark.group = f"dp/non-dp ratio resnet9 group_norm batch={sizes.batch}"
    shape = {"batch": sizes.batch, "width": sizes.width, "device": DEVICE}
    nonprivate_s = measure_one(
        "resnet9", "group_norm", "nonprivate", size=32, warmup=1, reps=3, **shape
    )["seconds"]
    step, x, y = make_step("resnet9", "group_norm", kind, **shape)

    def call():
        step(x, y)
        synchronize(DEVICE)

    _measure(benchmark, sizes, sizes.batch, call, memory=False)
    ratio = sizes.batch / benchmark.extra_info["throughput_img_s"] / nonprivate_s
    benchmark.extra_info["dp_nonprivate_time_ratio"] = ratio
    assert 0 < ratio < 50


SPARSITY = {
    "dense": (None, None),
    "grad-drop-0.5": (None, GradDropConfig(0.5)),
    "pre-prune-0.8": (PruneConfig(0.8), None),
    "pre-prune-0.8+grad-drop-0.5": (PruneConfig(0.8), GradDropConfig(0.5)),
}


@pytest.mark.parametrize("mode", ["bk", "hooks"])
@pytest.mark.parametrize("setting", list(SPARSITY))
def test_sparse_dp_step(benchmark, sizes, setting, mode):
    """What pre-pruning and gradient dropping cost per DP step (`bench.sparsity`): under ``bk`` a
    dropped channel keeps the ghost norms, a pruned layer materialises its per-example
    gradients; under ``hooks`` both only mask what Opacus already materialised."""
    benchmark.group = f"sparse DP step resnet9 group_norm {mode} batch={sizes.batch}"
    torch.manual_seed(0)
    model = create_backbone("resnet9", norm="group_norm", width=sizes.width).to(DEVICE)
    prune, drop = SPARSITY[setting]
    sparsity = Sparsity(
        model,
        prune=prune,
        drop=drop,
        streams=lambda purpose: stream(0, purpose, DEVICE),
        public=None,
    )
    training = TrainingConfig(batch_size=sizes.batch, max_physical_batch=sizes.batch, lr=0.1)
    step = build_dp_step(
        model, training, noise_multiplier=1.0, max_grad_norm=1.0, mode=mode, sparsity=sparsity
    )
    x = torch.randn(sizes.batch, 1, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (sizes.batch,), device=DEVICE)

    def call():
        step(x, y)
        synchronize(DEVICE)

    reset_peak_memory(DEVICE)
    _measure(benchmark, sizes, sizes.batch, call)
    trained, total = sparsity.trainable_coordinates()
    benchmark.extra_info["trained_coordinate_share"] = trained / total
    assert benchmark.extra_info["peak_mem_bytes"] > _parameter_bytes(model)
    assert 0 < trained / total <= 1


@pytest.mark.parametrize("path", ["fused", "unfold-reference"])
def test_knconv2d_forward(benchmark, sizes, path):
    """KNConv2d computed without unfolding against the unfold-normalise-convolve definition."""
    benchmark.group = "knconv2d forward"
    layer = KNConv2d(64, 64, 3, dropout=0.0).to(DEVICE)
    x = torch.randn(sizes.batch, 64, 16, 16, device=DEVICE)
    core = layer.core

    def fused():
        with torch.no_grad():
            layer(x)
        synchronize(DEVICE)

    def reference():
        with torch.no_grad():
            knconv2d_unfold_reference(x, core.weight, core.bias, stride=1, padding=1, eps=layer.eps)
        synchronize(DEVICE)

    call = fused if path == "fused" else reference
    _measure(benchmark, sizes, sizes.batch, call, memory=False)


@pytest.mark.parametrize("path", ["custom-sampler", "functorch-reference"])
def test_knconv2d_per_sample_gradients(benchmark, sizes, path):
    """The registered KNConv sampler against Opacus' generic functorch path on the same layer."""
    benchmark.group = "knconv2d per-sample gradients"
    layer = KNConv2d(64, 64, 3, dropout=0.0).to(DEVICE)
    x = torch.randn(sizes.batch, 64, 16, 16, device=DEVICE)
    mu, inv_std = window_stats(x, 3, 1, 1, layer.eps)
    g = torch.randn(sizes.batch, 64, 16, 16, device=DEVICE)
    acts = [x, mu, inv_std]

    def custom():
        knconv_grad_sample(layer.core, acts, g)
        synchronize(DEVICE)

    per_example = per_example_grads(layer.core)

    def functorch():
        per_example(g, *acts)
        synchronize(DEVICE)

    call = custom if path == "custom-sampler" else functorch
    _measure(benchmark, sizes, sizes.batch, call, memory=False)


def _layer_case(name: str):
    """A layer, its inputs and an output gradient: 64 channels at 16x16, as mid-network."""
    torch.manual_seed(0)
    layer = {
        "conv2d": lambda: nn.Conv2d(64, 64, 3, padding=1, bias=False),
        "ws_conv2d": lambda: ScaledStdConv2d(64, 64, 3, padding=1),
        "knconv_core": lambda: KNConv2d(64, 64, 3, padding=1, dropout=0.0).core,
        "group_norm": lambda: nn.GroupNorm(16, 64),
        "channel_affine": lambda: ChannelAffine(64),
    }[name]().to(DEVICE)
    return layer


PER_SAMPLE_PATHS = {
    "conv2d": ["bk", "opacus", "functorch"],
    "ws_conv2d": ["bk", "functorch"],  # Opacus has no sampler for timm's WS conv
    "knconv_core": ["bk", "opacus", "functorch"],  # "opacus": the registered custom sampler
    "group_norm": ["bk", "opacus", "functorch"],
    "channel_affine": ["bk", "opacus", "functorch"],  # "opacus": the registered custom sampler
}


@pytest.mark.parametrize(
    ("layer_name", "path"), [(k, p) for k, paths in PER_SAMPLE_PATHS.items() for p in paths]
)
def test_per_sample_gradient_norms(benchmark, sizes, layer_name, path):
    """Per-example gradient norms of one layer: the book-keeping rule (`bkclip.layer_norms`)
    against the registered grad sampler (Opacus' own, or this project's for its custom layers)
    and per-example autograd through torch.func; the first two must agree with the third."""
    benchmark.group = f"per-sample gradient norms: {layer_name} batch={sizes.batch}"
    layer = _layer_case(layer_name)
    x = torch.randn(sizes.batch, 64, 16, 16, device=DEVICE)
    inputs = [x, *window_stats(x, 3, 1, 1, 1e-5)] if layer_name == "knconv_core" else [x]
    with torch.no_grad():
        output = layer(*inputs)
    g = torch.randn_like(output)

    def bk():
        return layer_norms(layer, inputs, g, output=output)

    def opacus():
        return norms_of(GradSampleModule.GRAD_SAMPLERS[type(layer)](layer, inputs, g))

    per_example = per_example_grads(layer)

    def functorch():
        return norms_of(per_example(g, *inputs))

    fn = {"bk": bk, "opacus": opacus, "functorch": functorch}[path]

    def call():
        fn()
        synchronize(DEVICE)

    _measure(benchmark, sizes, sizes.batch, call, memory=False)
    if path != "functorch":
        torch.testing.assert_close(fn(), functorch(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("views", [1, 16])
def test_device_data_path(benchmark, sizes, views):
    """Poisson sampling and augmentation alone, on the device (CIFAR-sized set, 32x32)."""
    benchmark.group = "data path (sampling + augmentation)"
    n = 50_000 if ON_GPU else 10_000
    data = random_device_data(n, DEVICE)
    gen = data.generator(0, "sampling")
    batch = 4096 if ON_GPU else 512

    def call():
        idx = data.poisson_batch(batch, gen)
        data.augment(data.train_x[idx], views=views, padding=4, flip=True, generator=gen)
        synchronize(DEVICE)

    _measure(benchmark, sizes, batch * views, call, memory=False)
