"""DP-SGD training of one grid cell: data and augmentation on the device, Opacus clipping and noise.

The loop is written out rather than taken from ``PrivacyEngine.make_private`` because the
benchmark needs three things that path does not give: Poisson sampling on the device with
q = B/N handed to the accountant (Opacus' DPDataLoader uses q = 1/len(loader) and a CPU
loader), augmentation multiplicity (the K views of an example share one clipped gradient), and
privacy costs other than DP-SGD composed into one budget. The parts that are Opacus' own are
used as they are: `DPOptimizer` for noise and the update, its accountants for the epsilon, and
`GradSampleModule` for per-sample gradients in the ``hooks``/``functorch`` modes; the default
``bk`` mode clips with `bench.bk` (one backward pass). The step itself is `bench.steps`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from torch import nn
from torch.optim.swa_utils import AveragedModel

import norms
from bench.backbones import create_backbone
from bench.config import Cell, DataConfig, TrainingConfig
from bench.data import Dataset, DeviceData, load_dataset
from bench.errors import ConfigError
from bench.measure import (
    StepTimer,
    peak_memory,
    process_peak_rss,
    provenance,
    reset_peak_memory,
)
from bench.privacy import Calibration, calibrate_noise, epsilon
from bench.steps import DPSGDStep, SGDStep, autocast, make_optimizer
from norms.dp_batch_norm import calibrate as calibrate_frozen_stats
from norms.dp_batch_norm import planned_charge

Progress = Callable[[int, int, float], None]


class Diverged(RuntimeError):
    """Raised when the training loss is not finite or exceeds ``training.max_loss``."""


@functools.lru_cache(maxsize=4)
def cached_dataset(cfg: DataConfig) -> Dataset:
    """`load_dataset`, decoded once per process for all the cells that share a data config."""
    return load_dataset(cfg)


@dataclass(frozen=True)
class PrivacyPlan:
    """What a cell will spend, fixed before training.

    Attributes:
        n_private: N, the private training set size.
        sample_rate: q = B / N.
        steps: DP-SGD steps.
        calibration: The noise calibration under the suite's accountant.
        charges: Descriptions of the run's other privacy costs.
    """

    n_private: int
    sample_rate: float
    steps: int
    calibration: Calibration
    charges: tuple[dict[str, Any], ...]


def plan_privacy(
    cell: Cell, n_private: int, model: nn.Module, accountant: str | None = None
) -> PrivacyPlan:
    """Calibrate DP-SGD's noise so that the cell's whole run spends ``privacy.epsilon``."""
    training, privacy = cell.training, cell.privacy
    q = training.batch_size / n_private
    steps = training.num_steps(n_private)
    charge = planned_charge(model)
    extra = [charge.history_entry()] if charge else []
    calibration = calibrate_noise(
        privacy.epsilon,
        privacy.delta,
        q,
        steps,
        extra=extra,
        accountant=accountant or privacy.accountant,
    )
    charges = (
        (
            {
                "description": charge.description,
                "noise_multiplier": charge.noise_multiplier,
                "sample_rate": charge.sample_rate,
                "steps": charge.steps,
            },
        )
        if charge
        else ()
    )
    return PrivacyPlan(n_private, q, steps, calibration, charges)


def build_model(cell: Cell, num_classes: int, device: torch.device) -> nn.Module:
    """The cell's backbone with its norm, on ``device``."""
    return create_backbone(cell.backbone, norm=cell.norm, num_classes=num_classes).to(device)


def grad_sample_paths(model: nn.Module, mode: str) -> dict[str, str]:
    """Which per-sample-gradient path each trainable layer type takes.

    ``opacus``: a sampler shipped by Opacus; ``custom``: registered by this project;
    ``functorch``: Opacus' generic vmap path (no exact-type sampler, or forced); under
    ``bk``: ``bk`` (a book-keeping rule of `bench.bk`) or ``bk-fallback`` (that layer's
    per-example gradients materialised through Opacus).
    """
    from bench.bk import rule_for

    paths: dict[str, str] = {}
    for module in model.modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        sampler = GradSampleModule.GRAD_SAMPLERS.get(type(module))
        if mode == "bk":
            path = "bk" if rule_for(module) == "bk" else "bk-fallback"
        elif mode == "functorch" or sampler is None:
            path = "functorch"
        else:
            path = "opacus" if sampler.__module__.startswith("opacus.") else "custom"
        paths[type(module).__name__] = path
    return dict(sorted(paths.items()))


def lr_lambda(training: TrainingConfig, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if step < training.warmup_steps:
            return (step + 1) / training.warmup_steps
        if training.lr_schedule == "cosine":
            t = (step - training.warmup_steps) / max(1, steps - training.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if training.lr_schedule == "step":
            passed = sum(step >= m * steps for m in training.lr_milestones)
            return training.lr_gamma**passed
        return 1.0

    return factor


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of the weights with De et al.'s warm-up: decay_t = min(decay, (1 + t) / (10 + t))."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor):
        t = float(num_averaged)
        mu = min(decay, (1 + t) / (10 + t))
        return averaged * mu + current * (1 - mu)

    return AveragedModel(model, avg_fn=avg, use_buffers=True)


class _Views:
    """The logical batch of examples ``idx`` as K augmented views each, on the device."""

    def __init__(self, data: DeviceData, training: TrainingConfig, generator: torch.Generator):
        self.data, self.training, self.generator = data, training, generator

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.training
        x_u8, y = self.data.train_x[idx], self.data.train_y[idx]
        if t.augment:
            x = self.data.augment(
                x_u8, views=t.augmult, padding=t.crop_padding, flip=True, generator=self.generator
            )
        else:
            x = self.data.prepare_eval(x_u8).unsqueeze(1)
        return x, y


def _optim_kwargs(training: TrainingConfig) -> dict[str, Any]:
    return {
        "optimizer": training.optimizer,
        "lr": training.lr,
        "momentum": training.momentum,
        "nesterov": training.nesterov,
        "weight_decay": training.weight_decay,
    }


def _check_loss(value: float, step: int, max_loss: float) -> None:
    if not math.isfinite(value) or value > max_loss:
        raise Diverged(f"diverged: loss is {value:.4g} at step {step}")


def _calibrate_statistics(
    model: nn.Module, resolved: norms.ResolvedNorm, data: DeviceData, seed: int, batch: int
) -> None:
    """Fill dp_batch_norm statistics: from public examples, or with DP from a private subset."""
    if resolved.needs_public_data:
        if data.public_x is None:
            raise ConfigError(
                f"{resolved} needs public data but the suite declares none (set data.public_split)"
            )
        source = data.public_x
    elif resolved.privacy_cost:
        k = min(int(resolved.params["calib_examples"]), data.num_private)
        # A random subset chosen without looking at the examples; its size is public.
        pick = torch.randperm(
            data.num_private, generator=data.generator(seed + 1), device=data.device
        )[:k]
        source = data.train_x[pick]
    else:
        return
    calibrate_frozen_stats(
        model,
        lambda: (data.prepare_eval(x) for x in source.split(batch)),
        generator=data.generator(seed + 2),
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch: int, precision: str) -> float:
    """Top-1 accuracy on the whole test set."""
    model.eval()
    correct = 0
    for x, y in zip(data.test_x.split(batch), data.test_y.split(batch), strict=True):
        with autocast(data.device, precision):
            correct += int((model(data.prepare_eval(x)).argmax(1) == y).sum())
    model.train()
    return correct / data.test_x.shape[0]


def nonprivate_throughput(
    model: nn.Module, data: DeviceData, training: TrainingConfig, seed: int
) -> tuple[float | None, int | None]:
    """Images/s and peak memory of non-private SGD on the same model, measured the same way.

    Same expected batch (a fixed B), the same physical batches and augmentation, no per-sample
    gradients; the timer excludes the same warm-up. Trains ``model`` in place: pass a copy.
    """
    model.train()
    step = SGDStep(
        model,
        make_optimizer(model.parameters(), **_optim_kwargs(training)),
        max_physical_batch=training.max_physical_batch,
        precision=training.precision,
    )
    gen = data.generator(seed + 3)
    views = _Views(data, training, gen)
    timer = StepTimer(data.device, training.throughput_warmup_steps)
    n = min(training.batch_size, data.num_private)
    reset_peak_memory(data.device)
    for _ in range(training.throughput_warmup_steps + training.throughput_steps):
        images: list[int] = []
        with timer.step(images):
            x, y = views(torch.randperm(data.num_private, generator=gen, device=data.device)[:n])
            step(x, y)
            images.append(x.shape[0] * x.shape[1])
    return timer.throughput, peak_memory(data.device)


def train_cell(
    cell: Cell, device: torch.device, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train one cell with DP-SGD and return its measured record fields (status ``ok``).

    The cell's identity (run key, backbone, norm, seed, targets, config) is the runner's part
    of the record (`bench.runner.run_cell`), written the same way whatever the outcome.

    Raises:
        IncompatibleError: The backbone refuses the norm (the runner records a skip).
        Diverged: The loss became non-finite or exceeded ``max_loss``.
        ConfigError: The cell cannot run as configured.
    """
    started = time.perf_counter()
    training, privacy = cell.training, cell.privacy
    torch.manual_seed(cell.seed)
    dataset = cached_dataset(cell.data)
    data = DeviceData(dataset, device, normalize=cell.data.normalize)
    resolved = norms.resolve_norm(cell.norm)
    model = build_model(cell, dataset.num_classes, device)
    plan = plan_privacy(cell, data.num_private, model)
    sigma = plan.calibration.noise_multiplier
    _calibrate_statistics(model, resolved, data, cell.seed, training.eval_batch_size)
    # The untrained model for the non-private measurement, copied only when it is wanted.
    initial = copy.deepcopy(model) if training.measure_nonprivate else None

    dp_step = DPSGDStep(
        model,
        make_optimizer(model.parameters(), **_optim_kwargs(training)),
        noise_multiplier=sigma,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=training.batch_size,
        max_physical_batch=training.max_physical_batch,
        mode=training.grad_sample_mode,
        precision=training.precision,
        generator=data.generator(cell.seed + 4),
    )
    # Opacus' accountant records every step the optimizer actually takes, with its (sigma, q).
    accountant = RDPAccountant()
    dp_step.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        dp_step.optimizer.original_optimizer, lr_lambda(training, plan.steps)
    )
    ema = ema_model(model, training.ema) if training.ema else None
    gen = data.generator(cell.seed)
    views = _Views(data, training, gen)
    timer = StepTimer(device, training.throughput_warmup_steps)
    reset_peak_memory(device)
    loss_value = float("nan")
    model.train()
    for step in range(plan.steps):
        images: list[int] = []
        with timer.step(images):
            x, y = views(data.poisson_batch(training.batch_size, gen))
            loss = dp_step(x, y)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            images.append(x.shape[0] * x.shape[1])
        if x.shape[0]:
            loss_value = loss
            _check_loss(loss_value, step, training.max_loss)
        if progress is not None:
            progress(step + 1, plan.steps, loss_value)
    dp_peak = peak_memory(device)
    train_s = time.perf_counter() - started

    steps_done = sum(n for _s, _q, n in accountant.history)
    history = [*plan.calibration.extra, *accountant.history]
    spent = {acc: epsilon(history, privacy.delta, acc) for acc in ("prv", "rdp")}
    chosen = spent[plan.calibration.accountant]
    eval_model = ema.module if ema is not None else model
    test_acc = evaluate(eval_model, data, training.eval_batch_size, training.precision)
    np_tput, np_peak = (
        nonprivate_throughput(initial, data, training, cell.seed)
        if training.measure_nonprivate
        else (None, None)
    )
    dp_tput = timer.throughput
    norm_spec = norms.get_norm(resolved.name)
    prov = provenance(device)  # runs git twice: once per cell
    return {
        "status": "ok",
        "error": None,
        "norm_name": resolved.name,
        "norm_params": dict(resolved.params),
        "n_private": data.num_private,
        "n_test": int(data.test_x.shape[0]),
        "test_acc": test_acc,
        "eval_weights": "ema" if ema is not None else "final",
        "final_train_loss": loss_value,
        "throughput_img_s": dp_tput,
        "nonprivate_throughput_img_s": np_tput,
        "dp_nonprivate_throughput_ratio": (dp_tput / np_tput) if dp_tput and np_tput else None,
        "throughput_timed_steps": timer.steps,
        "peak_mem_bytes": dp_peak,
        "nonprivate_peak_mem_bytes": np_peak,
        "peak_rss_bytes": process_peak_rss(),
        "memory_measure": (
            "torch.cuda.max_memory_allocated during DP training"
            if device.type == "cuda"
            else "cpu: no per-run tensor peak; peak_rss_bytes is the process peak "
            "resident set so far"
        ),
        "device": prov["device_name"],
        "epsilon_spent": chosen.epsilon,
        "epsilon_spent_by_accountant": {a: r.epsilon for a, r in spent.items()},
        "accountant": chosen.accountant,
        "accountant_note": "; ".join(filter(None, [plan.calibration.note, chosen.note])),
        "noise_multiplier": sigma,
        "sample_rate": plan.sample_rate,
        "steps": plan.steps,
        "steps_done": steps_done,
        "privacy_charges": list(plan.charges),
        "augmult": training.augmult,
        "grad_sample_mode": training.grad_sample_mode,
        "grad_sampler": norm_spec.grad_sampler,
        "grad_sample_paths": grad_sample_paths(model, training.grad_sample_mode),
        "train_wall_s": train_s,
        "wall_s": time.perf_counter() - started,
        "provenance": prov,
    }
