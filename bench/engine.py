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
import gc
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from torch import nn

import norms
from bench import checkpoint, saved_model
from bench.config import Cell, DataConfig, TrainingConfig
from bench.data import Dataset, DeviceData, dataset_checksum, load_dataset
from bench.measure import StepMemory, StepTimer, process_peak_rss
from bench.plan import CellPlan, build_model, check_grad_sample_mode, plan_cell
from bench.privacy import epsilon
from bench.provenance import record_provenance
from bench.seeds import run_stream, seed_global
from bench.sparsity import PublicData, Sparsity
from bkclip import DPSGDStep, SGDStep, autocast, make_optimizer, rule_for
from norms.lifecycle import RunData

Progress = Callable[[int, int, float], None]


class Diverged(RuntimeError):
    """Raised when the training loss is not finite or exceeds ``training.max_loss``.

    The message names the step and the threshold, never the private loss itself unless
    ``training.log_private_loss`` is on. The stop is a data-dependent decision (it reads
    un-noised private losses) that the accounting does not cover; the runner records such a
    run ``failed`` with ``diverged: true`` and publishes no model or accuracy for it.

    Attributes:
        step: The step at which the loss crossed the threshold.
    """

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@functools.lru_cache(maxsize=4)
def cached_dataset(cfg: DataConfig) -> Dataset:
    """`load_dataset`, decoded once per process for all the cells that share a data config."""
    return load_dataset(cfg)


@functools.lru_cache(maxsize=4)
def cached_checksum(cfg: DataConfig) -> str:
    """`bench.data.dataset_checksum` of `cached_dataset`, hashed once per process."""
    return dataset_checksum(cached_dataset(cfg))


def grad_sampler(mode: str) -> str:
    """What computed the clipped per-example gradients: ``bk`` (`bench.bk`'s book-keeping
    clipper) or ``opacus`` (Opacus' GradSampleModule, ``hooks`` or ``functorch``)."""
    return "bk" if mode == "bk" else "opacus"


def grad_sample_paths(model: nn.Module, mode: str) -> dict[str, str]:
    """Which per-sample-gradient path each trainable layer type takes.

    ``opacus``: a sampler shipped by Opacus; ``custom``: registered by this project;
    ``functorch``: Opacus' generic vmap path (no exact-type sampler, or forced); under
    ``bk``: ``bk`` (a book-keeping rule of `bench.bk`) or ``bk-fallback`` (that layer's
    per-example gradients materialised through Opacus).
    """
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


class EMA:
    """EMA of the weights with De et al.'s warm-up: decay_t = min(decay, (1 + t) / (10 + t)).

    The first update copies the model; update t >= 1 moves every floating-point parameter and
    buffer towards the model's by 1 - decay_t (other buffers are copied). The decay is computed
    on the host from a Python count and all tensors move in one ``torch._foreach_lerp_``, so an
    update only queues device work: torch's ``AveragedModel`` read its step count off the
    device once per parameter, a synchronisation per parameter inside the timed step.

    Attributes:
        module: The averaged copy of the model (evaluate it).
        updates: Updates made so far.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (the same architecture as `module`)."""
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        floats = [(a, c.detach()) for a, c in pairs if a.is_floating_point()]
        others = [(a, c.detach()) for a, c in pairs if not a.is_floating_point()]
        if self.updates == 0:
            torch._foreach_copy_([a for a, _ in pairs], [c.detach() for _, c in pairs])
        else:
            t = self.updates
            mu = min(self.decay, (1 + t) / (10 + t))
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1 - mu)
            if others:
                torch._foreach_copy_([a for a, _ in others], [c for _, c in others])
        self.updates += 1


def ema_model(model: nn.Module, decay: float) -> EMA:
    """The EMA of ``model``'s weights (see `EMA`)."""
    return EMA(model, decay)


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


def _check_loss(value: float, step: int, training: TrainingConfig) -> None:
    """Stop a diverged run; the message carries the private loss only when it is logged."""
    if not math.isfinite(value) or value > training.max_loss:
        shown = (
            f" (loss {value:.4g}: a non-private diagnostic, training.log_private_loss)"
            if training.log_private_loss
            else ""
        )
        raise Diverged(
            f"diverged: the training loss was not finite or above training.max_loss="
            f"{training.max_loss:g} at step {step}{shown}",
            step,
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


def _after_update(
    scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None, model: nn.Module
) -> None:
    """What follows the update in every timed step, DP or not: the schedule and the EMA."""
    scheduler.step()
    if ema is not None:
        ema.update(model)


@dataclass(frozen=True)
class NonPrivateMeasure:
    """The non-private reference of a run.

    Attributes:
        throughput: Images/s over the timed steps (None when none was timed).
        relative_se: Relative standard error of ``throughput`` (`StepTimer.relative_se`).
        timed_steps: Steps timed.
        peak_bytes: The steps' own peak device memory above what was held before them.
        peak_abs_bytes: The allocator's whole peak during them.
    """

    throughput: float | None
    relative_se: float | None
    timed_steps: int
    peak_bytes: int | None
    peak_abs_bytes: int | None


def nonprivate_throughput(
    model: nn.Module,
    data: DeviceData,
    training: TrainingConfig,
    seed: int,
    *,
    steps: int,
    match_relative_se: float | None = None,
    max_timed_steps: int | None = None,
    on_step: Callable[[nn.Module, int], None] | None = None,
) -> NonPrivateMeasure:
    """Images/s and memory of non-private SGD on the same model, over the same kind of step.

    Same expected batch (a fixed B), the same physical batches and augmentation, no per-sample
    gradients; each timed step holds what a DP step holds apart from privacy: sampling the
    batch, augmentation, forward, backward, the update, the learning-rate schedule (of a run of
    ``steps`` steps), when ``training.ema`` is set, the EMA update, and ``on_step(model,
    step)``, the norm's per-step hook (`norms.ResolvedNorm.on_step`, e.g. statistics recomputed
    from public data), so the DP/non-DP ratio compares like with like; the same warm-up is
    excluded. At least ``training.throughput_steps`` steps are timed, then more until the
    relative standard error of the throughput is no larger than ``match_relative_se`` (the DP
    side's), up to ``max_timed_steps`` (the DP side's count). Trains ``model`` in place: pass
    a copy, and free the DP model first so that the memory figures are this step's alone.
    """
    model.train()
    optimizer = make_optimizer(model.parameters(), **_optim_kwargs(training))
    step = SGDStep(
        model,
        optimizer,
        max_physical_batch=training.max_physical_batch,
        precision=training.precision,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(training, steps))
    ema = ema_model(model, training.ema) if training.ema else None
    gen = data.generator(seed, "nonprivate")
    views = _Views(data, training, gen)
    timer = StepTimer(data.device, training.throughput_warmup_steps)
    n = min(training.batch_size, data.num_private)
    most = max(training.throughput_steps, max_timed_steps or 0)
    memory = StepMemory(data.device).start()

    def more() -> bool:
        if timer.steps < training.throughput_steps:
            return True
        if timer.steps >= most or match_relative_se is None:
            return False
        se = timer.relative_se
        return se is None or se > match_relative_se

    count = 0
    while timer.steps < training.throughput_steps or more():
        images: list[int] = []
        with timer.step(images):
            if on_step is not None:
                on_step(model, count)
            x, y = views(torch.randperm(data.num_private, generator=gen, device=data.device)[:n])
            step(x, y)
            _after_update(scheduler, ema, model)
            images.append(x.shape[0] * x.shape[1])
        count += 1
    return NonPrivateMeasure(
        timer.throughput, timer.relative_se, timer.steps, memory.above, memory.absolute
    )


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
    ema: EMA | None
    started: float
    sparsity: Sparsity
    run_data: RunData

    def stream(self, purpose: str) -> torch.Generator:
        """This run's generator for ``purpose`` (`bench.seeds.run_stream`)."""
        return _stream(self.cell, self.data, purpose)


def _stream(cell: Cell, data: DeviceData, purpose: str) -> torch.Generator:
    """The seeded stream of ``purpose`` (`DeviceData.generator`), or under
    ``privacy.secure_noise`` an unpredictable one for the secret purposes."""
    if cell.privacy.secure_noise:
        return run_stream(cell.seed, purpose, data.device, secure=True)
    return data.generator(cell.seed, purpose)


def _setup(cell: Cell, device: torch.device) -> _Run:
    """Data on the device, the model, its norm prepared, the privacy plan and the DP step.

    Raises:
        ConfigError: The norm does not declare the cell's grad-sample mode.
    """
    started = time.perf_counter()
    training, privacy = cell.training, cell.privacy
    check_grad_sample_mode(cell)
    dataset = cached_dataset(cell.data)
    # A tuning run holds the validation split out and is scored on it; the test set is never
    # copied to the device, so nothing in it can read the test set.
    data = DeviceData(dataset, device, normalize=cell.data.normalize, holdout=cell.stage == "tune")
    resolved = norms.resolve_norm(cell.norm)
    seed_global(cell.seed, "init")
    model = build_model(cell, dataset.num_classes, device)
    plan = plan_cell(cell, model=model)
    # Pre-pruning comes before the norm's preparation, so statistics describe the pruned net.
    sparsity = Sparsity(
        model,
        prune=training.pre_prune,
        drop=training.grad_drop,
        streams=lambda purpose: _stream(cell, data, purpose),
        public=None
        if data.public_x is None
        else PublicData(data.public_x, data.public_y, data.prepare_eval, training.eval_batch_size),
    )
    run_data = RunData(
        private_x=data.train_x,
        public_x=data.public_x,
        to_input=data.prepare_eval,
        batch_size=training.eval_batch_size,
        generator=lambda purpose: _stream(cell, data, f"norm.{purpose}"),
    )
    resolved.prepare(model, run_data)
    # The untrained model for the non-private measurement, copied only when it is wanted.
    initial = copy.deepcopy(model) if training.measure_nonprivate else None
    dp_step = DPSGDStep(
        model,
        make_optimizer(model.parameters(), **_optim_kwargs(training)),
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=plan.batch_size,
        max_physical_batch=training.max_physical_batch,
        mode=training.grad_sample_mode,
        precision=training.precision,
        generator=_stream(cell, data, "noise"),
        secure_mode=privacy.secure_noise,
        sparsity=sparsity,
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
        sparsity,
        run_data,
    )


@dataclass(frozen=True)
class _Trained:
    """What the DP-SGD loop measured; ``resumed_from`` is the checkpoint's step, if any."""

    loss: float
    timer: StepTimer
    peak_bytes: int | None
    peak_abs_bytes: int | None
    resumed_from: int | None


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _loop_state(
    run: _Run,
    step: int,
    loss: float,
    generators: dict[str, torch.Generator],
    peaks: tuple[int | None, int | None],
) -> dict[str, Any]:
    """Everything the rest of the run and its record depend on, after ``step`` steps.

    Under ``privacy.secure_noise`` this includes the secret streams' states (noise,
    sampling): whoever reads the checkpoint can replay the noise, so a checkpoint is as
    private as the training data; it stays on the run's machine and is deleted with the record.
    """
    clipper = getattr(run.dp_step, "clipper", None)
    return {
        "step": step,
        "loss": loss,
        "model": run.model.state_dict(),
        "optimizer": run.dp_step.optimizer.original_optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "ema": None
        if run.ema is None
        else {"module": run.ema.module.state_dict(), "updates": run.ema.updates},
        "steps_taken": run.dp_step.steps_taken,
        "generators": checkpoint.generator_states(generators),
        "global_rng": checkpoint.global_rng_state(),
        "accountant_history": [tuple(h) for h in run.accountant.history],
        "bk_reached": None
        if clipper is None
        else sorted(clipper.names[id(m)] for m in clipper.layers if id(m) in clipper.reached),
        "peak_bytes": peaks[0],
        "peak_abs_bytes": peaks[1],
        "sparsity": run.sparsity.state_dict(),
    }


def _restore(run: _Run, state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put the run back where `_loop_state` found it (tensors in place, so the optimiser and
    the per-sample machinery keep pointing at the model's own parameters)."""
    run.model.load_state_dict(state["model"])
    run.dp_step.optimizer.original_optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.ema is not None:
        run.ema.module.load_state_dict(state["ema"]["module"])
        run.ema.updates = int(state["ema"]["updates"])
    run.dp_step.steps_taken = int(state["steps_taken"])
    checkpoint.restore_generators(generators, state["generators"])
    checkpoint.restore_global_rng(state["global_rng"])
    run.accountant.history = [tuple(h) for h in state["accountant_history"]]
    if state.get("sparsity") is not None:
        run.sparsity.load_state_dict(state["sparsity"])
    clipper = getattr(run.dp_step, "clipper", None)
    if clipper is not None:
        reached = set(state["bk_reached"])
        clipper.reached = {id(m) for m in clipper.layers if clipper.names[id(m)] in reached}


def _train(run: _Run, progress: Progress | None, checkpoint_dir: Path | None) -> _Trained:
    """The DP-SGD loop: the last non-empty step's loss, the step timer and the steps' memory.

    Each timed step starts with the norm's per-step hook (`norms.ResolvedNorm.on_step`), so
    what it costs is part of the step.

    With ``checkpoint_dir``, it starts from the run's valid checkpoint there, if any (a refused
    one is named in one line on stderr), and writes one every ``training.checkpoint_every``
    steps but after the last, outside the timed steps. The timer
    covers the steps of this process only; the memory peaks are the largest of all processes.
    """
    training = run.cell.training
    generators = {
        "sampling": run.stream("sampling"),
        "augmentation": run.stream("augmentation"),
        "noise": run.dp_step.optimizer.generator,
    }
    if run.sparsity.generator is not None:
        generators["grad_drop"] = run.sparsity.generator
    views = _Views(run.data, training, generators["augmentation"])
    seed_global(run.cell.seed, "dropout")
    every = training.checkpoint_every
    path = checkpoint.checkpoint_path(checkpoint_dir, run.cell.run_key) if checkpoint_dir else None
    cfg_hash = run.cell.checkpoint_hash if path else ""
    start, loss_value, peaks = 0, float("nan"), (None, None)
    if path is not None:
        found = checkpoint.load(path, cfg_hash, run.device)
        if found.reason is not None:
            print(f"{run.cell.run_key}: {found.reason}", file=sys.stderr)
        if found.state is not None:
            _restore(run, found.state, generators)
            start, loss_value = int(found.state["step"]), float(found.state["loss"])
            peaks = (found.state["peak_bytes"], found.state["peak_abs_bytes"])
    timer = StepTimer(run.device, training.throughput_warmup_steps)
    memory = StepMemory(run.device).start()
    run.model.train()
    for step in range(start, run.plan.steps):
        images: list[int] = []
        with timer.step(images):
            run.norm.on_step(run.model, run.run_data, step)
            x, y = views(run.data.poisson_batch(run.plan.batch_size, generators["sampling"]))
            loss = run.dp_step(x, y)
            _after_update(run.scheduler, run.ema, run.model)
            images.append(x.shape[0] * x.shape[1])
        if x.shape[0]:
            loss_value = loss
            _check_loss(loss_value, step, training)
        done = step + 1
        if path is not None and every and done % every == 0 and done < run.plan.steps:
            now = (_max(peaks[0], memory.above), _max(peaks[1], memory.absolute))
            state = _loop_state(run, done, loss_value, generators, now)
            checkpoint.save(path, state, cfg_hash)
        if progress is not None:
            # The live view on the operator's terminal; it never reaches a record.
            progress(done, run.plan.steps, loss_value)
    return _Trained(
        loss_value,
        timer,
        _max(peaks[0], memory.above),
        _max(peaks[1], memory.absolute),
        start if start else None,
    )


def _save_model(run: _Run, model_dir: Path, eval_weights: str) -> str:
    """Write the final and the EMA weights as ``<model_dir>/<run_key>.pt``
    (`bench.saved_model`); the path relative to the folder above ``model_dir`` (the records')."""
    ema = run.ema.module if run.ema is not None else None
    path = saved_model.save(model_dir, run.cell.run_key, run.model, ema, eval_weights)
    return str(path.relative_to(Path(model_dir).parent))


def _merged(history) -> list[tuple[float, float, int]]:
    """An accountant history with consecutive equal (sigma, q) entries summed."""
    out: list[tuple[float, float, int]] = []
    for sigma, q, n in history:
        if n <= 0:
            continue
        if out and out[-1][:2] == (float(sigma), float(q)):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(n))
        else:
            out.append((float(sigma), float(q), int(n)))
    return out


def _spent(run: _Run) -> dict[str, Any]:
    """Epsilon spent, from the steps taken and the charges made, under the one accountant the
    noise was calibrated with (`bench.privacy.Calibration.accountant`), the other beside it."""
    cal = run.plan.calibration
    history = _merged([*cal.extra, *run.accountant.history])
    delta = run.cell.privacy.delta
    if history == _merged(cal.history()):  # the run did what was planned
        by_acc = dict(cal.epsilon_by_accountant)
    else:
        results = {a: epsilon(history, delta, a) for a in ("prv", "rdp")}
        by_acc = {a: r.epsilon if r.accountant == a else None for a, r in results.items()}
    accountant, note = cal.accountant, cal.note
    if by_acc.get(accountant) is None:
        # PRV answered for the planned history but not for the one run: the RDP bound holds.
        accountant = "rdp"
        note = "; ".join(filter(None, [note, "PRV failed on the steps taken; reported with RDP"]))
    return {
        "epsilon_spent": by_acc[accountant],
        "epsilon_spent_by_accountant": by_acc,
        "accountant": accountant,
        "accountant_requested": run.cell.privacy.accountant,
        "accountant_note": note,
        "steps_done": sum(n for _s, _q, n in run.accountant.history),
    }


def _release(run: _Run) -> None:
    """Drop the DP model, its per-example machinery, its gradients and its EMA, so that the
    non-private reference runs with only the data and its own model on the device."""
    for p in run.model.parameters():
        p.grad = None
    run.model = run.dp_step = run.ema = run.scheduler = None  # type: ignore[assignment]
    gc.collect()
    if run.device.type == "cuda":
        torch.cuda.empty_cache()


def train_cell(
    cell: Cell,
    device: torch.device,
    *,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    model_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one cell with DP-SGD and return its measured record fields (status ``ok``).

    The cell's identity (run key, backbone, norm, seed, targets, config) is the runner's part
    of the record (`bench.runner.run_cell`), written the same way whatever the outcome. Every
    random source draws from its own named stream of the cell's seed (`bench.seeds`), or, for
    the secret ones under ``privacy.secure_noise``, from the operating system's entropy.

    What leaves the run is DP or public: the test accuracy, the noise and privacy figures,
    timings and memory; the un-noised loss of private batches only with
    ``training.log_private_loss``, listed in ``nonprivate_diagnostics``.

    Args:
        checkpoint_dir: Where the run's checkpoints live (``<dir>/<run_key>/``): it resumes
            from a valid one and writes them every ``training.checkpoint_every`` steps. The
            caller deletes the checkpoint once the record is written
            (`bench.checkpoint.remove`). None: no checkpoints.
        model_dir: Where ``training.save_model`` writes the final and the EMA weights
            (`bench.saved_model`).

    Raises:
        IncompatibleError: The backbone refuses the norm (the runner records a skip).
        Diverged: The loss became non-finite or exceeded ``max_loss``.
        ConfigError: The cell cannot run as configured.
    """
    run = _setup(cell, device)
    training = cell.training
    trained = _train(run, progress, checkpoint_dir)
    timer = trained.timer
    train_s = time.perf_counter() - run.started
    spent = _spent(run)
    eval_model = run.ema.module if run.ema is not None else run.model
    eval_weights = "ema" if run.ema is not None else "final"
    accuracy = evaluate(eval_model, run.data, training.eval_batch_size, training.precision)
    scored_on = run.data.eval_split
    model_path = (
        _save_model(run, model_dir, eval_weights)
        if training.save_model and model_dir is not None
        else None
    )
    del eval_model
    paths = grad_sample_paths(run.model, training.grad_sample_mode)
    clipper = getattr(run.dp_step, "clipper", None)
    fallback = clipper.fallback_classes if clipper is not None else []
    unreached = clipper.unreached_layers if clipper is not None else []
    del clipper
    initial, data = run.initial, run.data
    sparsity_summary = run.sparsity.summary()
    run.sparsity = None  # type: ignore[assignment]  # it holds the DP model
    _release(run)
    nonprivate = (
        nonprivate_throughput(
            initial,
            data,
            training,
            cell.seed,
            steps=run.plan.steps,
            match_relative_se=timer.relative_se,
            max_timed_steps=timer.steps,
            on_step=lambda model, step: run.norm.on_step(model, run.run_data, step),
        )
        if initial is not None
        else None
    )
    del initial
    dp_tput = timer.throughput
    np_tput = nonprivate.throughput if nonprivate is not None else None
    prov = record_provenance(device)  # runs git twice: once per cell
    log_loss = training.log_private_loss
    return {
        "status": "ok",
        "error": None,
        "norm_name": run.norm.name,
        "norm_params": dict(run.norm.params),
        "n_private": data.num_private,
        "n_test": int(data.test_x.shape[0]) if scored_on == "test" else None,
        "n_val": int(data.test_x.shape[0]) if scored_on == "val" else None,
        "stage": cell.stage,
        "tuned": dict(cell.tuned),
        "num_classes": run.plan.num_classes,
        "dataset_sha256": cached_checksum(cell.data),
        "test_acc": accuracy if scored_on == "test" else None,
        "val_acc": accuracy if scored_on == "val" else None,
        "dp_valid": run.plan.dp_valid,
        "simulated": None
        if run.plan.dp_valid
        else {
            "epsilon": cell.privacy.epsilon,
            "delta": cell.privacy.delta,
            "batch_size": training.batch_size,
            "reference_noise_multiplier": run.plan.calibration.noise_multiplier,
            "simulated_batch_size": run.plan.batch_size,
        },
        "eval_weights": eval_weights,
        "final_train_loss": trained.loss if log_loss else None,
        "nonprivate_diagnostics": ["final_train_loss"] if log_loss else [],
        "throughput_img_s": dp_tput,
        "throughput_rel_se": timer.relative_se,
        "nonprivate_throughput_img_s": np_tput,
        "nonprivate_throughput_rel_se": nonprivate.relative_se if nonprivate else None,
        "nonprivate_timed_steps": nonprivate.timed_steps if nonprivate else None,
        "dp_nonprivate_throughput_ratio": (dp_tput / np_tput) if dp_tput and np_tput else None,
        "throughput_timed_steps": timer.steps,
        "peak_mem_bytes": trained.peak_bytes,
        "peak_mem_abs_bytes": trained.peak_abs_bytes,
        "nonprivate_peak_mem_bytes": nonprivate.peak_bytes if nonprivate else None,
        "nonprivate_peak_mem_abs_bytes": nonprivate.peak_abs_bytes if nonprivate else None,
        "peak_rss_bytes": process_peak_rss(),
        "memory_measure": (
            "torch.cuda.max_memory_allocated over the training steps, minus what was allocated "
            "before the first (data, model, EMA); *_abs_bytes: the whole peak"
            if device.type == "cuda"
            else "cpu: no per-run tensor peak; peak_rss_bytes is the process peak "
            "resident set so far"
        ),
        "nonprivate_measure": (
            "same step as DP (sampling a batch of B, augmentation, forward, backward, update, "
            "lr schedule"
            + (", EMA" if training.ema else "")
            + (", the norm's per-step hook" if run.norm.spec.on_step else "")
            + ") without per-example "
            "clipping or noise, after the DP model, its gradients and its EMA were freed"
        ),
        "device": prov["device_name"],
        "epsilon_spent": spent["epsilon_spent"],
        "epsilon_spent_by_accountant": spent["epsilon_spent_by_accountant"],
        "accountant": spent["accountant"],
        "accountant_requested": spent["accountant_requested"],
        "accountant_note": spent["accountant_note"],
        "steps_done": spent["steps_done"],
        "noise_multiplier": run.plan.noise_multiplier,
        "sample_rate": run.plan.sample_rate,
        "steps": run.plan.steps,
        "privacy_charges": [c.as_record() for c in run.plan.charges],
        "secure_noise": cell.privacy.secure_noise,
        "augmult": training.augmult,
        "grad_sample_mode": training.grad_sample_mode,
        "grad_sampler": grad_sampler(training.grad_sample_mode),
        "norm_grad_sampler": run.norm.spec.grad_sampler,
        "norm_dp_status": run.norm.dp_status,
        "norm_dp_note": run.norm.dp_note,
        "grad_sample_paths": paths,
        "bk_fallback_classes": fallback,
        "bk_unreached_layers": unreached,
        "random_streams": (
            "named: sha256(seed, purpose) per source (bench.seeds)"
            + (
                "; sampling, noise and norm streams from os.urandom"
                if cell.privacy.secure_noise
                else ""
            )
        ),
        "sparsity": sparsity_summary,
        "resumed_from_step": trained.resumed_from,
        "model_path": model_path,
        "train_wall_s": train_s,
        "wall_s": time.perf_counter() - run.started,
        "provenance": prov,
    }
