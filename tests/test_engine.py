"""Training a cell: what leaves a run is DP or public, and the DP/non-DP figures are unbiased."""

from __future__ import annotations

import collections
import dataclasses
import gc
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import bench.measure
import bench.plan
import bench.train.cell
import norms.registry
from bench.config import TrainingConfig
from bench.data import DeviceData
from bench.errors import ConfigError
from bench.results.records import read_records
from bench.seeds import cell_stream_seed, run_stream, stream
from bench.suite import load_suite
from bench.sweep.options import RunOptions
from bench.sweep.run import run_suite
from bench.train.cell import train_cell
from bench.train.data_cache import cached_dataset
from bench.train.ema import EMA, ema_model
from bench.train.reference import nonprivate_throughput
from bench.train.setup import setup_run
from bkclip import BookKeepingClipper, DPSGDStep

CPU = torch.device("cpu")


def one_cell(tiny: Path, *overrides: str):
    (cell,) = load_suite(tiny, ["grid.seed=[0]", "grid.norm=[group_norm]", *overrides]).cells()
    return cell


def run_one(tiny: Path, out: Path, *overrides: str) -> dict:
    suite = load_suite(tiny, ["grid.seed=[0]", "grid.norm=[group_norm]", *overrides])
    run_suite(suite, RunOptions(out_dir=out, progress=False, report=False))
    (record,) = read_records(out / "records.jsonl").records
    return record


# --- what leaves the run ------------------------------------------------------------------


def test_records_carry_the_private_training_loss_only_when_asked_and_then_say_so(tiny, tmp_path):
    quiet = run_one(tiny, tmp_path / "a")
    assert quiet["status"] == "ok"
    assert quiet["final_train_loss"] is None and quiet["nonprivate_diagnostics"] == []
    logged = run_one(tiny, tmp_path / "b", "training.log_private_loss=true")
    assert math.isfinite(logged["final_train_loss"])
    assert logged["nonprivate_diagnostics"] == ["final_train_loss"]
    assert logged["run_key"] == quiet["run_key"]  # a diagnostic does not change the run


def test_a_private_loss_stop_is_recorded_failed_diverged_and_listed_as_non_private(tiny, tmp_path):
    check = "training.divergence_check=private_loss"
    record = run_one(tiny, tmp_path / "a", "training.max_loss=1.0e-6", check)
    assert record["status"] == "failed" and record["diverged"] is True
    assert record["error"] == (
        "diverged: the training loss was not finite or above training.max_loss=1e-06 at step 0"
        " (training.divergence_check=private_loss: a non-private stop)"
    )
    assert record["divergence_check"] == "private_loss"
    assert record["nonprivate_diagnostics"] == ["diverged"]
    logged = run_one(
        tiny, tmp_path / "b", "training.max_loss=1.0e-6", "training.log_private_loss=true", check
    )
    assert "(loss " in logged["error"] and "non-private diagnostic" in logged["error"]


def test_records_and_suite_json_carry_no_absolute_path_of_the_machine(tiny, tmp_path):
    """The default cache directory is under the home, the suite file under a temporary one."""
    out = tmp_path / "out"
    record = run_one(tiny, out)
    assert record["config"]["data"]["cache_dir"] == "~/.cache/dp-norm-bench"
    assert len(record["dataset_sha256"]) == 64
    for name in ("records.jsonl", "suite.json"):
        text = (out / name).read_text()
        assert str(Path.home()) not in text and str(tmp_path) not in text, name
    assert json.loads((out / "suite.json").read_text())["path"] == "…/tiny.yaml"


# --- randomness -----------------------------------------------------------------------------


def test_secure_noise_draws_secret_streams_from_the_os_and_keeps_the_rest_on_the_seed():
    def draw(purpose: str, secure: bool) -> torch.Tensor:
        return torch.randn(8, generator=run_stream(3, purpose, cell_key="k", secure=secure))

    for purpose in ("noise", "sampling", "norm.dp_batch_norm.noise"):
        assert torch.equal(draw(purpose, False), draw(purpose, False))  # default: reproducible
        keyed = torch.Generator().manual_seed(cell_stream_seed(3, purpose, "k"))
        assert torch.equal(draw(purpose, False), torch.randn(8, generator=keyed))  # the cell's
        assert not torch.equal(draw(purpose, False), torch.randn(8, generator=stream(3, purpose)))
        assert not torch.equal(draw(purpose, True), draw(purpose, True))
    for purpose in ("augmentation", "init", "nonprivate"):
        assert torch.equal(draw(purpose, True), draw(purpose, False))


def test_a_secure_noise_run_uses_opacus_secure_mode_and_unpredictable_noise(tiny):
    secure = one_cell(tiny, "privacy.secure_noise=true")
    assert secure.run_key != one_cell(tiny).run_key
    first, second = (setup_run(secure, CPU) for _ in range(2))
    assert first.dp_step.optimizer.secure_mode
    a, b = (torch.randn(4, generator=r.dp_step.optimizer.generator) for r in (first, second))
    assert not torch.equal(a, b)
    plain = [setup_run(one_cell(tiny), CPU) for _ in range(2)]
    a, b = (torch.randn(4, generator=r.dp_step.optimizer.generator) for r in plain)
    assert torch.equal(a, b) and not plain[0].dp_step.optimizer.secure_mode


# --- the non-private reference, memory, EMA -------------------------------------------------


def test_the_nonprivate_reference_runs_with_the_dp_model_and_its_ema_freed(tiny, monkeypatch):
    real, alive = nonprivate_throughput, []

    def spy(*args, **kwargs):
        gc.collect()
        kinds = (DPSGDStep, BookKeepingClipper, EMA)
        with warnings.catch_warnings():  # isinstance on some torch objects warns
            warnings.simplefilter("ignore")
            alive.extend(type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.train.cell, "nonprivate_throughput", spy)
    record = train_cell(one_cell(tiny, "training.ema=0.9"), CPU)
    assert record["nonprivate_throughput_img_s"] > 0
    assert alive == []


def test_the_nonprivate_step_holds_the_schedule_and_the_ema_as_the_dp_step_does(tiny, monkeypatch):
    real = nonprivate_throughput
    calls = {"schedule": 0, "ema": 0, "inside": False}
    step, update = torch.optim.lr_scheduler.LambdaLR.step, EMA.update

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += calls["inside"]
            return fn(*args, **kwargs)

        return wrapper

    def spy(*args, **kwargs):
        calls["inside"] = True
        try:
            return real(*args, **kwargs)
        finally:
            calls["inside"] = False

    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", counted("schedule", step))
    monkeypatch.setattr(EMA, "update", counted("ema", update))
    monkeypatch.setattr(bench.train.cell, "nonprivate_throughput", spy)
    record = train_cell(one_cell(tiny, "training.ema=0.9"), CPU)
    steps = record["nonprivate_timed_steps"] + one_cell(tiny).training.throughput_warmup_steps
    assert calls["ema"] == steps
    assert calls["schedule"] == steps + 1  # LambdaLR's constructor takes the first step


def test_the_nonprivate_timing_runs_until_its_error_matches_the_dp_sides(tiny):
    cell = one_cell(tiny)
    data = DeviceData(cached_dataset(cell.data), CPU)
    training = TrainingConfig(
        batch_size=8, max_physical_batch=8, steps=10, throughput_warmup_steps=1, throughput_steps=2
    )
    model = bench.plan.build_model(cell, 10, CPU)
    loose = nonprivate_throughput(model, data, training, 0, steps=10, match_relative_se=1.0)
    assert loose.timed_steps == 2  # already as precise as asked
    exact = nonprivate_throughput(
        model, data, training, 0, steps=10, match_relative_se=0.0, max_timed_steps=6
    )
    assert exact.timed_steps == 6 and exact.relative_se is not None


def test_peak_memory_is_the_steps_own_above_data_and_model_with_the_absolute_beside(
    tiny, monkeypatch
):
    """Device figures faked (the CPU keeps none): 1000 bytes held before the steps, 5000 at peak."""
    monkeypatch.setattr(bench.measure, "allocated_memory", lambda device: 1000)
    monkeypatch.setattr(bench.measure, "peak_memory", lambda device: 5000)
    record = train_cell(one_cell(tiny), CPU)
    assert (record["peak_mem_bytes"], record["peak_mem_abs_bytes"]) == (4000, 5000)
    assert (record["nonprivate_peak_mem_bytes"], record["nonprivate_peak_mem_abs_bytes"]) == (
        4000,
        5000,
    )


class _DeviceReads(TorchDispatchMode):
    """Counts operators that copy a device value to the host (``.item()``, ``float(t)``)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_the_ema_update_reads_no_device_value_and_follows_the_warmed_up_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    ema = ema_model(model, 0.9)
    update = getattr(ema, "update", None) or ema.update_parameters
    expected = [p.detach().clone() for p in model.parameters()]
    update(model)
    with _DeviceReads() as reads:
        for t in range(1, 5):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
            mu = min(0.9, (1 + t) / (10 + t))
            expected = [
                mu * e + (1 - mu) * p for e, p in zip(expected, model.parameters(), strict=True)
            ]
            update(model)
    assert reads.reads == 0
    for e, got in zip(expected, ema.module.parameters(), strict=True):
        torch.testing.assert_close(got, e)


# --- the grad-sample path -------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "sampler"), [("bk", "bk"), ("hooks", "opacus")])
def test_the_record_names_the_clipping_path_that_ran(tiny, mode, sampler):
    record = train_cell(one_cell(tiny, f"training.grad_sample_mode={mode}"), CPU)
    assert record["grad_sampler"] == sampler
    assert record["norm_grad_sampler"] == "opacus"  # group_norm's registered provider


def test_a_norm_run_in_a_grad_sample_mode_it_does_not_declare_is_refused(tiny):
    """kernel_norm declares only Opacus' hooks mode (and bk, open to every norm)."""
    with pytest.raises(
        ConfigError, match="kernel_norm does not declare grad-sample mode 'functorch'"
    ):
        load_suite(tiny, ["grid.norm=[kernel_norm]", "training.grad_sample_mode=functorch"])
    cell = one_cell(tiny)
    refused = dataclasses.replace(
        cell,
        norm="kernel_norm",
        training=dataclasses.replace(cell.training, grad_sample_mode="functorch"),
    )
    with pytest.raises(ConfigError, match="does not declare"):
        train_cell(refused, CPU)


# --- the record's fields and the cell resolved once -------------------------------------------

#: The fields `train_cell` measures, in the order the record has always written them (the
#: record is built by one function per section, `bench.train.record`).
MEASURED_FIELDS = (
    "status", "error", "norm_name", "norm_params", "n_private", "n_test", "n_val", "stage",
    "tuned", "num_classes", "dataset_sha256", "image_shape", "augment_flip", "test_acc",
    "val_acc", "val_score_noise", "dp_valid", "simulated", "eval_weights", "final_train_loss",
    "nonprivate_diagnostics", "throughput_img_s",
    "throughput_rel_se", "nonprivate_throughput_img_s", "nonprivate_throughput_rel_se",
    "nonprivate_timed_steps", "dp_nonprivate_throughput_ratio", "throughput_timed_steps",
    "peak_mem_bytes", "peak_mem_abs_bytes", "nonprivate_peak_mem_bytes",
    "nonprivate_peak_mem_abs_bytes", "peak_rss_bytes", "memory_measure", "nonprivate_measure",
    "device", "epsilon_spent", "epsilon_spent_by_accountant", "accountant",
    "accountant_requested", "accountant_note", "steps_done", "noise_multiplier", "sample_rate",
    "steps", "privacy_charges", "secure_noise", "stream_scheme", "epsilon_with_tuning",
    "epsilon_with_tuning_accountant", "epsilon_with_tuning_method", "epsilon_with_tuning_history",
    "augmult", "grad_sample_mode", "grad_sampler",
    "norm_grad_sampler", "norm_dp_status", "norm_dp_note", "grad_sample_paths",
    "bk_fallback_classes", "bk_unreached_layers", "random_streams", "sparsity",
    "resumed_from_step", "model_path", "train_wall_s", "wall_s", "provenance", "world_size",
    "predictions",
)  # fmt: skip


def test_the_measured_record_keeps_every_field_in_its_order(tiny):
    assert tuple(train_cell(one_cell(tiny), CPU)) == MEASURED_FIELDS


def test_a_trained_cell_parses_its_norm_spec_once_and_checks_its_mode_once(tiny, monkeypatch):
    """The norm is resolved once (`bench.plan.resolve_cell_norm`) and travels in the plan;
    before, training one cell parsed its spec five times and checked its mode twice."""
    cell = one_cell(tiny, "training.ema=0.9")
    parsed, checked = collections.Counter(), []
    parse, check = norms.registry.parse_spec, bench.plan.check_grad_sample_mode

    def counted_parse(spec, *args, **kwargs):
        parsed[spec] += 1
        return parse(spec, *args, **kwargs)

    def counted_check(*args, **kwargs):
        checked.append(args[0].norm)
        return check(*args, **kwargs)

    monkeypatch.setattr(norms.registry, "parse_spec", counted_parse)
    monkeypatch.setattr(bench.plan, "check_grad_sample_mode", counted_check)
    assert train_cell(cell, CPU)["status"] == "ok"
    assert parsed == {"group_norm": 1}
    assert checked == ["group_norm"]
