"""The DP-SGD loop of a set-up run: timed steps, divergence stop, checkpoints and resume."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench import checkpoint
from bench.config import TrainingConfig
from bench.measure import StepMemory, StepTimer
from bench.seeds import seed_global
from bench.train.schedule import after_update
from bench.train.setup import Run
from bench.train.stop import StopRequest
from bench.train.views import Views

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


@dataclass(frozen=True)
class Trained:
    """What the DP-SGD loop measured; ``resumed_from`` is the checkpoint's step, if any."""

    loss: float
    timer: StepTimer
    peak_bytes: int | None
    peak_abs_bytes: int | None
    resumed_from: int | None


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _loop_state(
    run: Run,
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


def _restore(run: Run, state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
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


def _generators(run: Run) -> dict[str, torch.Generator]:
    """The run's random streams that a checkpoint saves and a resume restores."""
    generators = {
        "sampling": run.stream("sampling"),
        "augmentation": run.stream("augmentation"),
        "noise": run.dp_step.optimizer.generator,
    }
    if run.sparsity.generator is not None:
        generators["grad_drop"] = run.sparsity.generator
    return generators


@dataclass
class _Resumed:
    """Where the loop starts: step, last loss and the memory peaks before it."""

    start: int = 0
    loss: float = math.nan
    peaks: tuple[int | None, int | None] = (None, None)


def _resume(
    run: Run, path: Path | None, cfg_hash: str, generators: dict[str, torch.Generator]
) -> _Resumed:
    """The run restored from its valid checkpoint at ``path``, if any; a refused one is named in
    one line on stderr."""
    if path is None:
        return _Resumed()
    found = checkpoint.load(path, cfg_hash, run.device)
    if found.reason is not None:
        print(f"{run.cell.run_key}: {found.reason}", file=sys.stderr)
    if found.state is None:
        return _Resumed()
    _restore(run, found.state, generators)
    state = found.state
    return _Resumed(
        int(state["step"]), float(state["loss"]), (state["peak_bytes"], state["peak_abs_bytes"])
    )


def train_loop(run: Run, progress: Progress | None, checkpoint_dir: Path | None) -> Trained:
    """The DP-SGD loop: the last non-empty step's loss, the step timer and the steps' memory.

    Each timed step starts with the norm's per-step hook (`norms.ResolvedNorm.on_step`), so
    what it costs is part of the step.

    With ``checkpoint_dir``, it starts from the run's valid checkpoint there, if any (a refused
    one is named in one line on stderr), and writes one every ``training.checkpoint_every``
    steps but after the last, outside the timed steps; Ctrl-C stops it when the current step
    ends, with that step's checkpoint saved (`bench.train.stop.StopRequest`). The timer
    covers the steps of this process only; the memory peaks are the largest of all processes.
    """
    training, steps = run.cell.training, run.plan.steps
    generators = _generators(run)
    views = Views(run.data, training, generators["augmentation"])
    seed_global(run.cell.seed, "dropout")
    every = training.checkpoint_every
    path = checkpoint.checkpoint_path(checkpoint_dir, run.cell.run_key) if checkpoint_dir else None
    cfg_hash = run.cell.checkpoint_hash if path else ""
    resumed = _resume(run, path, cfg_hash, generators)
    loss_value, peaks = resumed.loss, resumed.peaks
    timer = StepTimer(run.device, training.throughput_warmup_steps)
    memory = StepMemory(run.device).start()
    run.model.train()
    with StopRequest() as stop:
        for step in range(resumed.start, steps):
            images: list[int] = []
            with timer.step(images):
                run.norm.on_step(run.model, run.run_data, step)
                x, y = views(run.data.poisson_batch(run.plan.batch_size, generators["sampling"]))
                loss = run.dp_step(x, y)
                after_update(run.scheduler, run.ema, run.model)
                images.append(x.shape[0] * x.shape[1])
            if x.shape[0]:
                loss_value = loss
                _check_loss(loss_value, step, training)
            done, stopping = step + 1, stop.step_ended()
            due = stopping or (every and done % every == 0)
            if path is not None and due and done < steps:
                now = (_max(peaks[0], memory.above), _max(peaks[1], memory.absolute))
                checkpoint.save(path, _loop_state(run, done, loss_value, generators, now), cfg_hash)
            if stopping:
                raise KeyboardInterrupt(f"stopped after step {done} of {steps}")
            if progress is not None:
                # The live view on the operator's terminal; it never reaches a record.
                progress(done, steps, loss_value)
    above, absolute = _max(peaks[0], memory.above), _max(peaks[1], memory.absolute)
    return Trained(loss_value, timer, above, absolute, resumed.start or None)
