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
from bench.config import Cell, DataConfig, TrainingConfig
from bench.data import Dataset, DeviceData, load_dataset
from bench.measure import (
    StepTimer,
    peak_memory,
    process_peak_rss,
    provenance,
    reset_peak_memory,
)
from bench.plan import CellPlan, build_model, plan_cell
from bench.privacy import epsilon
from bench.seeds import seed_global
from bench.steps import DPSGDStep, SGDStep, autocast, make_optimizer
from norms.lifecycle import RunData

Progress = Callable[[int, int, float], None]


class Diverged(RuntimeError):
    """Raised when the training loss is not finite or exceeds ``training.max_loss``."""


@functools.lru_cache(maxsize=4)
def cached_dataset(cfg: DataConfig) -> Dataset:
    """`load_dataset`, decoded once per process for all the cells that share a data config."""
    return load_dataset(cfg)


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
    gen = data.generator(seed, "nonprivate")
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


@dataclass
class _Run:
    """A cell set up for training: its data, model, plan and the objects the loop drives."""

    cell: Cell
    device: torch.device
    data: DeviceData
    norm: norms.ResolvedNorm
    model: nn.Module
    plan: CellPlan
    initial: nn.Module | None
    dp_step: DPSGDStep
    accountant: RDPAccountant
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: AveragedModel | None
    started: float


def _setup(cell: Cell, device: torch.device) -> _Run:
    """Data on the device, the model, its norm prepared, the privacy plan and the DP step."""
    started = time.perf_counter()
    training, privacy = cell.training, cell.privacy
    dataset = cached_dataset(cell.data)
    data = DeviceData(dataset, device, normalize=cell.data.normalize)
    resolved = norms.resolve_norm(cell.norm)
    seed_global(cell.seed, "init")
    model = build_model(cell, dataset.num_classes, device)
    plan = plan_cell(cell, model=model)
    resolved.prepare(
        model,
        RunData(
            private_x=data.train_x,
            public_x=data.public_x,
            to_input=data.prepare_eval,
            batch_size=training.eval_batch_size,
            generator=lambda purpose: data.generator(cell.seed, f"norm.{purpose}"),
        ),
    )
    # The untrained model for the non-private measurement, copied only when it is wanted.
    initial = copy.deepcopy(model) if training.measure_nonprivate else None
    dp_step = DPSGDStep(
        model,
        make_optimizer(model.parameters(), **_optim_kwargs(training)),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=training.batch_size,
        max_physical_batch=training.max_physical_batch,
        mode=training.grad_sample_mode,
        precision=training.precision,
        generator=data.generator(cell.seed, "noise"),
    )
    # Opacus' accountant records every step the optimizer actually takes, with its (sigma, q).
    accountant = RDPAccountant()
    dp_step.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        dp_step.optimizer.original_optimizer, lr_lambda(training, plan.steps)
    )
    ema = ema_model(model, training.ema) if training.ema else None
    return _Run(
        cell,
        device,
        data,
        resolved,
        model,
        plan,
        initial,
        dp_step,
        accountant,
        scheduler,
        ema,
        started,
    )


def _train(run: _Run, progress: Progress | None) -> tuple[float, StepTimer]:
    """The DP-SGD loop; returns the last non-empty step's loss and the step timer."""
    training = run.cell.training
    sampling = run.data.generator(run.cell.seed, "sampling")
    views = _Views(run.data, training, run.data.generator(run.cell.seed, "augmentation"))
    seed_global(run.cell.seed, "dropout")
    timer = StepTimer(run.device, training.throughput_warmup_steps)
    reset_peak_memory(run.device)
    loss_value = float("nan")
    run.model.train()
    for step in range(run.plan.steps):
        images: list[int] = []
        with timer.step(images):
            x, y = views(run.data.poisson_batch(training.batch_size, sampling))
            loss = run.dp_step(x, y)
            run.scheduler.step()
            if run.ema is not None:
                run.ema.update_parameters(run.model)
            images.append(x.shape[0] * x.shape[1])
        if x.shape[0]:
            loss_value = loss
            _check_loss(loss_value, step, training.max_loss)
        if progress is not None:
            progress(step + 1, run.plan.steps, loss_value)
    return loss_value, timer


def _spent(run: _Run) -> dict[str, Any]:
    """Epsilon spent under each accountant, from the steps taken and the charges made."""
    history = [*run.plan.calibration.extra, *run.accountant.history]
    spent = {acc: epsilon(history, run.cell.privacy.delta, acc) for acc in ("prv", "rdp")}
    chosen = spent[run.plan.calibration.accountant]
    return {
        "epsilon_spent": chosen.epsilon,
        "epsilon_spent_by_accountant": {a: r.epsilon for a, r in spent.items()},
        "accountant": chosen.accountant,
        "accountant_note": "; ".join(filter(None, [run.plan.calibration.note, chosen.note])),
        "steps_done": sum(n for _s, _q, n in run.accountant.history),
    }


def train_cell(
    cell: Cell, device: torch.device, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Train one cell with DP-SGD and return its measured record fields (status ``ok``).

    The cell's identity (run key, backbone, norm, seed, targets, config) is the runner's part
    of the record (`bench.runner.run_cell`), written the same way whatever the outcome. Every
    random source draws from its own named stream of the cell's seed (`bench.seeds`).

    Raises:
        IncompatibleError: The backbone refuses the norm (the runner records a skip).
        Diverged: The loss became non-finite or exceeded ``max_loss``.
        ConfigError: The cell cannot run as configured.
    """
    run = _setup(cell, device)
    training = cell.training
    loss_value, timer = _train(run, progress)
    dp_peak = peak_memory(device)
    train_s = time.perf_counter() - run.started
    spent = _spent(run)
    eval_model = run.ema.module if run.ema is not None else run.model
    test_acc = evaluate(eval_model, run.data, training.eval_batch_size, training.precision)
    np_tput, np_peak = (
        nonprivate_throughput(run.initial, run.data, training, cell.seed)
        if run.initial is not None
        else (None, None)
    )
    dp_tput = timer.throughput
    prov = provenance(device)  # runs git twice: once per cell
    clipper = getattr(run.dp_step, "clipper", None)
    return {
        "status": "ok",
        "error": None,
        "norm_name": run.norm.name,
        "norm_params": dict(run.norm.params),
        "n_private": run.data.num_private,
        "n_test": int(run.data.test_x.shape[0]),
        "test_acc": test_acc,
        "eval_weights": "ema" if run.ema is not None else "final",
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
        "epsilon_spent": spent["epsilon_spent"],
        "epsilon_spent_by_accountant": spent["epsilon_spent_by_accountant"],
        "accountant": spent["accountant"],
        "accountant_note": spent["accountant_note"],
        "steps_done": spent["steps_done"],
        "noise_multiplier": run.plan.noise_multiplier,
        "sample_rate": run.plan.sample_rate,
        "steps": run.plan.steps,
        "privacy_charges": [c.as_record() for c in run.plan.charges],
        "augmult": training.augmult,
        "grad_sample_mode": training.grad_sample_mode,
        "grad_sampler": run.norm.spec.grad_sampler,
        "grad_sample_paths": grad_sample_paths(run.model, training.grad_sample_mode),
        "bk_fallback_classes": clipper.fallback_classes if clipper is not None else [],
        "random_streams": "named: sha256(seed, purpose) per source (bench.seeds)",
        "train_wall_s": train_s,
        "wall_s": time.perf_counter() - run.started,
        "provenance": prov,
    }
