"""What only a CUDA device runs, checked on one: the same oracles as on the CPU, CUDA's paths.

Skipped with the reason "no CUDA device" elsewhere. Each CUDA-only path of the project has a
test here (README, "GPU-only paths"): CUDA generators for Poisson sampling, augmentation,
DP-SGD noise and a norm's DP statistics; ``torch.cuda.max_memory_allocated`` through
`bench.measure.StepMemory` and the engine's records; bf16 autocast on CUDA in every
grad-sample mode; the book-keeping rules on cuDNN kernels (fp32 with TF32 off, bf16, and
channels-last tensors); KernelNorm's fused kernels and sampler; the runner's
one-worker-per-GPU executor. Sized for well under 3 minutes of one H100.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import norms
from bench.backbones import create_backbone, list_backbones
from bench.config import TrainingConfig
from bench.measure import StepMemory, peak_memory, reset_peak_memory
from bench.perf.kinds import make_step, random_device_data
from bench.suite import load_suite
from bench.sweep.local import WorkerPoolExecutor
from bench.sweep.options import RunOptions
from bench.sweep.run import run_suite
from bench.train.cell import train_cell
from bench.train.setup import build_dp_step
from bkclip import BookKeepingClipper
from norms.frozen_stats import frozen_stats_layers
from norms.kernel_norm import KNConv2d, knconv2d_unfold_reference
from norms.lifecycle import RunData
from tests.bk_cases import BK_CASES, bk, oracle
from tests.dp_cases import GRAD_SAMPLE_CASES, NORM_VARIANTS, SIZE, build
from tests.dp_oracles import grad_sample_mismatches, norm_variants, oracle_variant

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CUDA = torch.device("cuda")


@pytest.fixture
def exact_fp32():
    """fp32 convolutions and matmuls without TF32, so fp32 agrees with float64 to ~1e-6
    (cuDNN would otherwise round convolution inputs to 10 mantissa bits)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _cuda_gen(seed: int = 0) -> torch.Generator:
    return torch.Generator(device=CUDA).manual_seed(seed)


def usable(norm: str, noise_multiplier: float) -> str:
    """``norm``, with DP statistics noised less when it has them. dp_batch_norm's default
    noise (multiplier 50) swamps moments from the few hundred examples a test has: variances
    clamp to 0 and the model overflows (in bf16, or in training), on any device. These tests
    are about CUDA, so they use a multiplier that fits their data."""
    resolved = norms.resolve_norm(norm)
    if resolved.privacy_cost:
        return str(resolved.variant(noise_multiplier=noise_multiplier))
    return norm


# --- the book-keeping clipper on CUDA ---------------------------------------------------------


def _clip_at_the_median(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    _, norms_ = oracle(model, x, y, clip=1e9)
    return float(norms_.median())


@pytest.mark.parametrize(("backbone", "norm", "views", "strategy", "keep"), BK_CASES)
def test_bk_clipped_sums_on_cuda_equal_the_one_example_oracle_on_the_cpu(
    backbone, norm, views, strategy, keep
):
    """Every (backbone, norm) and every route of `tests/test_bk.py`, the book-keeping rules on
    CUDA's kernels in float64 against the float64 oracle on the CPU, at `tests/test_bk.py`'s
    tolerances; the clip at the median norm, so some examples are clipped."""
    ref_model = build(backbone, norm)
    x = torch.randn(3, views, 3, SIZE, SIZE, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    clip = _clip_at_the_median(ref_model, x, y)
    ref, ref_norms = oracle(ref_model, x, y, clip)
    got, got_norms = bk(
        copy.deepcopy(ref_model).to(CUDA), x.to(CUDA), y.to(CUDA), clip, strategy, keep
    )
    torch.testing.assert_close(got_norms.double().cpu(), ref_norms, atol=1e-8, rtol=1e-6)
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g.cpu(), r, atol=1e-9, rtol=1e-6)


FP32_CASES = [c for c in BK_CASES if c.values[4] == "auto"]


@pytest.mark.parametrize(("backbone", "norm", "views", "strategy", "keep"), FP32_CASES)
def test_bk_clipped_sums_on_cuda_in_fp32_equal_the_fp32_oracle_on_cuda(
    exact_fp32, backbone, norm, views, strategy, keep
):
    """The same in fp32 (TF32 off), against the oracle in fp32 on CUDA. Held to 1%, not
    1e-6: the fp32 gradient of some pairs moves by ~0.3% with rounding alone (knresnet13 with
    layer_norm and 3 views, on the CPU too, oracle against oracle); a wrong rule is off by far
    more, and the float64 test above holds the rules exactly."""
    model = build(backbone, usable(norm, 0.05)).float().to(CUDA)
    x = torch.randn(3, views, 3, SIZE, SIZE, device=CUDA, generator=_cuda_gen())
    y = torch.tensor([1, 4, 7], device=CUDA)
    clip = _clip_at_the_median(model, x, y)
    ref, ref_norms = oracle(model, x, y, clip)
    got, got_norms = bk(model, x, y, clip, strategy, keep)
    torch.testing.assert_close(got_norms.to(ref_norms.dtype), ref_norms, rtol=1e-2, atol=1e-6)
    scale = max(float(r.abs().max()) for r in ref)  # of the whole gradient: some layers' are ~0
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-2, atol=1e-3 * scale)


@pytest.mark.parametrize("backbone", sorted(list_backbones()))
@pytest.mark.parametrize("norm", NORM_VARIANTS)
def test_bk_under_cuda_bf16_autocast_keeps_each_clipped_contribution_within_the_bound(
    backbone, norm
):
    """bf16 autocast on CUDA: one example's clipped gradient has norm at most C (to fp32
    rounding) and, with C below every example's norm, at least C (1 - 1e-3)."""
    torch.manual_seed(0)
    model = build(backbone, usable(norm, 0.05)).float().to(CUDA)
    clipper = BookKeepingClipper(model)
    clip = 1e-3
    ratios = []
    for label in range(4):
        for p in model.parameters():
            p.summed_grad = None
        x = torch.randn(1, 1, 3, SIZE, SIZE, device=CUDA, generator=_cuda_gen(label))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            clipper.accumulate(x, torch.tensor([label], device=CUDA), max_grad_norm=clip)
        grads = [p.summed_grad.double() for p in model.parameters() if p.requires_grad]
        ratios.append(float(torch.sqrt(sum(g.square().sum() for g in grads))) / clip)
    assert max(ratios) <= 1 + 1e-5, ratios
    assert min(ratios) >= 1 - 1e-3, ratios


@pytest.mark.parametrize(
    ("backbone", "norm"),
    [("wrn16_4", "group_norm"), ("knresnet13", oracle_variant("kernel_norm"))],
)
def test_bk_clipped_sums_are_the_same_with_channels_last_tensors(exact_fp32, backbone, norm):
    """No path uses channels-last yet; this shows the clipper gives the same sums when the
    model and the batch are in that memory format (the layout cuDNN prefers for speed)."""
    model = build(backbone, norm).float().to(CUDA)
    x = torch.randn(3, 1, 3, SIZE, SIZE, device=CUDA, generator=_cuda_gen())
    y = torch.tensor([1, 4, 7], device=CUDA)
    ref, _ = bk(model, x, y, 0.5, "auto")
    model = model.to(memory_format=torch.channels_last)
    x_cl = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view_as(x)
    got, _ = bk(model, x_cl, y, 0.5, "auto")
    for r, g in zip(ref, got, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


# --- Opacus' per-sample gradients and KernelNorm on CUDA ---------------------------------------


@pytest.mark.parametrize(("backbone", "norm", "mode"), GRAD_SAMPLE_CASES)
def test_per_sample_gradients_on_cuda_equal_one_example_gradients(backbone, norm, mode):
    """Opacus' samplers, this project's samplers (ChannelAffine, KNConvCore) and functorch on
    CUDA in float64, against Opacus' one-example oracle, for every declared mode."""
    model = build(backbone, norm).to(CUDA)
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64, device=CUDA, generator=_cuda_gen())
    assert grad_sample_mismatches(model, x, mode) == []


def test_fused_knconv_on_cuda_equals_unfold_normalise_convolve():
    layer = KNConv2d(5, 6, 3, stride=2, padding=1, dropout=0.0).double().to(CUDA)
    x = torch.randn(4, 5, 11, 11, dtype=torch.float64, device=CUDA, generator=_cuda_gen())
    x = x * 20 + 0.5
    ref = knconv2d_unfold_reference(
        x, layer.core.weight, layer.core.bias, stride=2, padding=1, eps=layer.eps
    )
    torch.testing.assert_close(layer(x), ref, atol=1e-9, rtol=1e-7)


def test_kernel_norm_statistics_dropout_on_cuda_follows_the_global_cuda_seed():
    """KernelNorm's statistics dropout draws from the global CUDA generator that
    `bench.seeds.seed_global` seeds: the same seed gives the same training output."""
    layer = KNConv2d(3, 4, 3, dropout=0.3).to(CUDA).train()
    x = torch.randn(2, 3, 8, 8, device=CUDA, generator=_cuda_gen())
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    torch.manual_seed(2)
    c = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- dp_batch_norm's DP statistics on CUDA ------------------------------------------------------


def _calibrated_stats(norm: str, seed: int) -> list[torch.Tensor]:
    """``norm``'s frozen statistics after its preparation hook ran on CUDA data, with the
    run's named CUDA streams (as `bench.train.setup` gives them)."""
    torch.manual_seed(0)
    model = create_backbone("resnet9", norm=norm, width=0.125).to(CUDA)
    data = random_device_data(2048, CUDA)
    norms.resolve_norm(norm).prepare(
        model,
        RunData(
            private_x=data.train_x[:1792],
            public_x=data.train_x[1792:],
            to_input=data.prepare_eval,
            batch_size=128,
            generator=lambda purpose: data.generator(seed, f"norm.{purpose}"),
        ),
    )
    layers = frozen_stats_layers(model)
    assert layers and all(bool(m.calibrated) for m in layers)
    for m in layers:
        assert m.mean.device.type == m.var.device.type == "cuda"
        assert torch.isfinite(m.mean).all() and (m.var >= 0).all()
    return [torch.cat([m.mean, m.var]) for m in layers]


@pytest.mark.parametrize("stats", ["public", "private_dp"])
def test_dp_batch_norm_calibrates_on_cuda_deterministically_for_a_seed(stats):
    norm = usable(f"dp_batch_norm[stats={stats}]", 10.0)
    a, b, c = (_calibrated_stats(norm, s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    if stats == "private_dp":  # the noise and the subsample come from the seed's streams
        assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


# --- the device-side data path ------------------------------------------------------------------


def test_poisson_sampling_and_augmentation_on_cuda_are_deterministic_for_a_seed():
    data = random_device_data(4096, CUDA)

    def draw(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        sampling = data.generator(seed, "sampling")
        augmentation = data.generator(seed, "augmentation")
        assert sampling.device.type == augmentation.device.type == "cuda"
        idx = [data.poisson_batch(256, sampling) for _ in range(3)]
        views = [
            data.augment(data.train_x[i], views=4, padding=4, flip=True, generator=augmentation)
            for i in idx
        ]
        return idx, views

    (idx_a, aug_a), (idx_b, aug_b), (idx_c, _) = draw(0), draw(0), draw(1)
    assert all(i.device.type == "cuda" for i in idx_a) and aug_a[0].device.type == "cuda"
    assert all(torch.equal(u, v) for u, v in zip(idx_a, idx_b, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(aug_a, aug_b, strict=True))
    assert not torch.equal(idx_a[0], idx_c[0])
    assert aug_a[0].shape == (idx_a[0].numel(), 4, 3, 32, 32)
    # Each example joins with q = 256/4096: the batch size is Binomial(4096, q).
    sizes = torch.tensor([i.numel() for i in idx_a], dtype=torch.float64)
    assert ((sizes - 256).abs() < 5 * (4096 * 0.0625 * 0.9375) ** 0.5).all()


def test_dp_noise_on_cuda_comes_from_the_runs_cuda_generator():
    """DP-SGD's noise drawn on CUDA from the run's noise stream: the same seed gives the same
    noised update, another seed another one."""

    def update(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = create_backbone("resnet9", norm="group_norm", width=0.125).to(CUDA)
        step = build_dp_step(
            model,
            TrainingConfig(batch_size=4, max_physical_batch=4, lr=1.0),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            mode="bk",
            generator=torch.Generator(device=CUDA).manual_seed(seed),
        )
        x = torch.randn(4, 1, 3, 16, 16, device=CUDA, generator=_cuda_gen())
        step(x, torch.arange(4, device=CUDA))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b, c = update(0), update(0), update(1)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- measurement ------------------------------------------------------------------------------


def test_step_memory_measures_the_cuda_peak_above_what_was_held_at_start():
    held = torch.empty(16 << 20, dtype=torch.uint8, device=CUDA)
    memory = StepMemory(CUDA).start()
    temp = torch.empty(64 << 20, dtype=torch.uint8, device=CUDA)
    del temp
    assert memory.above is not None and memory.above >= 64 << 20
    assert memory.absolute >= memory.above + held.numel()


@pytest.mark.parametrize("kind", ["nonprivate", "dp", "dp-opacus-hooks", "dp-opacus-ghost"])
def test_every_perf_kind_runs_on_cuda_and_reports_its_cuda_peak(kind):
    step, x, y = make_step("resnet9", "group_norm", kind, batch=8, width=0.25, device=CUDA)
    reset_peak_memory(CUDA)
    step(x, y)
    torch.cuda.synchronize()
    assert peak_memory(CUDA) > 0
    assert all(p.device.type == "cuda" for p in step.model.parameters())


# --- training cells and the runner on CUDA -------------------------------------------------------

SUITE = """\
name: gpu_tiny
description: a few DP-SGD steps per norm on CUDA
data: {source: synthetic, num_train: 2048, num_test: 128, image_size: 16, public_split: 64}
privacy: {epsilon: 8.0, delta: 1.0e-4, accountant: rdp}
training:
  batch_size: 128
  max_physical_batch: 64
  steps: 4
  lr: 1.0
  crop_padding: 2
  augmult: 2
  eval_batch_size: 128
  throughput_warmup_steps: 1
  throughput_steps: 2
grid:
  backbone: ["resnet9[width=0.125]"]
  norm: NORMS
  seed: [0]
"""


def _suite(tmp_path: Path, norm_list: list[str], *overrides: str):
    path = tmp_path / "gpu_tiny.yaml"
    path.write_text(SUITE.replace("NORMS", json.dumps(norm_list)))
    return load_suite(path, list(overrides))


def _assert_a_measured_cuda_record(record: dict) -> None:
    assert record["status"] == "ok", record.get("error")
    assert record["device"] == torch.cuda.get_device_name(0)
    assert record["peak_mem_bytes"] and record["peak_mem_bytes"] > 0
    assert record["dp_nonprivate_throughput_ratio"] and record["dp_nonprivate_throughput_ratio"] > 0
    assert 0.97 * record["epsilon_target"] <= record["epsilon_spent"] <= record["epsilon_target"]
    assert record["steps_done"] == record["steps"]


@pytest.mark.parametrize("norm", norm_variants())
def test_a_short_cell_trains_on_cuda_and_records_memory_ratio_and_epsilon(tmp_path, norm):
    (cell,) = _suite(tmp_path, [usable(norm, 10.0)]).cells()
    record = {"epsilon_target": cell.privacy.epsilon, **train_cell(cell, CUDA)}
    _assert_a_measured_cuda_record(record)


@pytest.mark.parametrize("mode", ["bk", "hooks", "functorch"])
def test_bf16_autocast_on_cuda_trains_in_every_grad_sample_mode(tmp_path, mode):
    (cell,) = _suite(
        tmp_path,
        ["group_norm"],
        "training.precision=bf16",
        f"training.grad_sample_mode={mode}",
    ).cells()
    record = {"epsilon_target": cell.privacy.epsilon, **train_cell(cell, CUDA)}
    _assert_a_measured_cuda_record(record)


def test_the_sequential_runner_on_cuda_writes_measured_records(tmp_path):
    suite = _suite(tmp_path, ["group_norm", "layer_norm"])
    summary = run_suite(
        suite,
        RunOptions(out_dir=tmp_path / "o", device="cuda", workers=1, progress=False, report=False),
    )
    assert summary.statuses == {"ok": 2}
    for line in (tmp_path / "o" / "records.jsonl").read_text().splitlines():
        _assert_a_measured_cuda_record(json.loads(line))


def test_the_one_worker_per_gpu_executor_runs_its_cells_on_the_gpu(tmp_path):
    """`bench.sweep.local.WorkerPoolExecutor` with one worker on a machine with a GPU: the worker is
    spawned on cuda:0 and appends measured records."""
    cells = _suite(tmp_path, ["group_norm", "scale_norm"]).cells()
    records = tmp_path / "records.jsonl"
    statuses = WorkerPoolExecutor(RunOptions(workers=1), tmp_path).run(cells)
    assert statuses == ["ok", "ok"]
    for line in records.read_text().splitlines():
        _assert_a_measured_cuda_record(json.loads(line))
