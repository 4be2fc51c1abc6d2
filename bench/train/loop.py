"""The DP-SGD loop of a set-up run: timed steps, divergence stop, checkpoints and resume."""

from __future__ import annotations

import functools
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
from bench.privacy import Calibration, epsilon, merged_history
from bench.seeds import seed_dropout, seed_global
from bench.train.schedule import after_update
from bench.train.setup import Run
from bench.train.stop import StopRequest
from bench.train.views import Views


@dataclass(frozen=True)
class StepReport:
    """What the live view may show after a step: public figures, and the private loss only
    when ``training.log_private_loss`` says so.

    Attributes:
        step: Steps done.
        steps: Steps planned.
        expected_images: Images a step is expected to train on: the expected batch b = q N
            times ``augmult`` views (public; the drawn batch's size is not).
        epsilon: The epsilon the steps so far and the run's charges spent, under RDP (fast, and
            looser than PRV); computed when called.
        private_loss: The un-noised loss of the last private batch, or None unless
            ``training.log_private_loss`` (a non-private diagnostic).
        budget: What ``epsilon`` is read against (`budget_text`): the whole run's RDP epsilon
            and, under PRV, the run's own, so a looser RDP figure above the target does not
            read as overspending.
    """

    step: int
    steps: int
    expected_images: int
    epsilon: Callable[[], float]
    private_loss: float | None = None
    budget: str = "(rdp)"


def budget_text(calibration: Calibration, simulated: tuple[float, int] | None = None) -> str:
    """``of 10.4 (rdp; the run spends 8 by prv)``: the whole planned run under RDP, which the
    live epsilon climbs to, and the epsilon the run is calibrated to and records, under its
    accountant. Under RDP the two are one: ``of 8 (rdp)``.

    A TAN simulation (``simulated``: the target epsilon and the suite's batch B it simulates)
    is calibrated at B but draws a smaller batch at a smaller sigma, so it spends far more
    than that target: the live figure is its true spend, and the text says it simulates the
    target, not spends it: ``(rdp; a TAN simulation, not DP: it simulates ε 8 at batch 4096)``.
    """
    if simulated is not None:
        target, batch = simulated
        return f"(rdp; a TAN simulation, not DP: it simulates ε {target:.3g} at batch {batch})"
    rdp = calibration.epsilon_by_accountant.get("rdp")
    if calibration.accountant == "rdp":
        return f"of {calibration.epsilon:.3g} (rdp)"
    whole = f"of {rdp:.3g} " if rdp is not None else ""
    return f"{whole}(rdp; the run spends {calibration.epsilon:.3g} by {calibration.accountant})"


Progress = Callable[[StepReport], None]


class Diverged(RuntimeError):
    """Raised when a run diverged, as ``training.divergence_check`` defines it.

    ``parameters`` (the default) stops a run when a parameter is not finite after an update.
    The parameters are a function of the initialisation and the noised updates, which DP-SGD's
    accounting already releases at every step, so the stop and its step read no private data
    beyond the run's release. ``private_loss`` also stops it when the un-noised loss of a private
    batch is not finite or above ``training.max_loss``: whether and when that fires is a
    data-dependent release outside the accounting, and the record says so
    (``nonprivate_diagnostics``). The message carries the private loss itself only with
    ``training.log_private_loss``. The runner records the run ``failed`` with
    ``diverged: true`` and publishes no model or accuracy for it.

    Attributes:
        step: The step whose update (or loss) diverged.
        nonprivate: The record fields the stop made non-private (``diverged``) or none.
    """

    def __init__(self, message: str, step: int, nonprivate: tuple[str, ...] = ()):
        super().__init__(message)
        self.step = step
        self.nonprivate = nonprivate

    def __reduce__(self):  # pickles whole: a rank of a multi-process cell sends it back
        return (type(self), (str(self), self.step, self.nonprivate))


def _check_parameters(model: torch.nn.Module, step: int) -> None:
    """Stop a run whose update made a parameter non-finite (reads only released values)."""
    finite = torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()
    if not bool(finite):
        raise Diverged(
            f"diverged: a parameter was not finite after the update of step {step} "
            f"(training.divergence_check=parameters: reads only the noised updates)",
            step,
        )


def _check_loss(value: float, step: int, training: TrainingConfig) -> None:
    """Stop a run whose private loss crossed ``max_loss`` (``divergence_check: private_loss``
    only); the message carries the private loss only when it is logged."""
    if training.divergence_check != "private_loss":
        return
    if not math.isfinite(value) or value > training.max_loss:
        shown = (
            f" (loss {value:.4g}: a non-private diagnostic, training.log_private_loss)"
            if training.log_private_loss
            else ""
        )
        raise Diverged(
            f"diverged: the training loss was not finite or above training.max_loss="
            f"{training.max_loss:g} at step {step} (training.divergence_check=private_loss: "
            f"a non-private stop){shown}",
            step,
            ("diverged",),
        )


def _epsilon_so_far(run: Run) -> float:
    """RDP's epsilon for the steps taken so far and the run's charges (the live view's; the
    record's is `bench.privacy.epsilon_spent`, under the run's accountant)."""
    history = merged_history([*run.plan.calibration.extra, *run.accountant.history])
    return epsilon(history, run.cell.privacy.delta, "rdp").epsilon


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
    """The run restored from its valid checkpoint at ``path``, if any, saying so on stderr
    (``resuming from step N``); a refused one is named in one line there too."""
    if path is None:
        return _Resumed()
    found = checkpoint.load(path, cfg_hash, run.device)
    if found.reason is not None:
        print(f"{run.cell.run_key}: {found.reason}", file=sys.stderr)
    if found.state is None:
        return _Resumed()
    _restore(run, found.state, generators)
    state = found.state
    print(f"{run.cell.run_key}: resuming from step {int(state['step'])}", file=sys.stderr)
    return _Resumed(
        int(state["step"]), float(state["loss"]), (state["peak_bytes"], state["peak_abs_bytes"])
    )


def _step(
    run: Run, views: Views, sampling: torch.Generator, timer: StepTimer, step: int
) -> tuple[int, float]:
    """One timed DP-SGD step: ``(examples in the logical batch, its mean loss)``.

    The norm's per-step hook, the Poisson sample, this rank's share of its views, the DP
    step, the schedule and the EMA, all inside the timer.
    """
    images: list[int] = []
    with timer.step(images):
        run.norm.on_step(run.model, run.run_data, step)
        idx = run.data.poisson_batch(run.plan.batch_size, sampling)
        block = run.dp_step.max_physical_batch
        share = run.ranks.shard(idx.shape[0], block)
        # Dropout per physical batch, by its place in the logical batch (`seed_dropout`).
        run.dp_step.on_chunk = functools.partial(
            seed_dropout, run.cell.seed, step, share.start // block
        )
        x, y = views(idx, share)
        loss = run.dp_step(x, y)
        loss = run.ranks.mean_loss(loss, run.dp_step.chunk_losses, idx.shape[0])
        after_update(run.scheduler, run.ema, run.model)
        images.append(x.shape[0] * x.shape[1])
    return int(idx.shape[0]), loss


def train_loop(run: Run, progress: Progress | None, checkpoint_dir: Path | None) -> Trained:
    """The DP-SGD loop: the last non-empty step's loss, the step timer and the steps' memory.

    Each timed step starts with the norm's per-step hook (`norms.ResolvedNorm.on_step`), so
    what it costs is part of the step.

    With ``checkpoint_dir``, it starts from the run's valid checkpoint there, if any (a refused
    one is named in one line on stderr), and writes one every ``training.checkpoint_every``
    steps but after the last, outside the timed steps; Ctrl-C stops it when the current step
    ends, with that step's checkpoint saved (`bench.train.stop.StopRequest`). The timer
    covers the steps of this process only; the memory peaks are the largest of all processes.

    On several processes (``run.ranks``) each draws the same logical batch, builds the views
    of its share and steps on it; all of them read the checkpoint, rank 0 alone writes it and
    reports progress.
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
    expected = run.plan.batch_size * training.augmult
    tan = None if run.plan.dp_valid else (run.cell.privacy.epsilon, training.batch_size)
    budget = budget_text(run.plan.calibration, tan)
    run.model.train()
    with StopRequest() as stop:
        for step in range(resumed.start, steps):
            if step == resumed.start + training.throughput_warmup_steps:
                run.ranks.reduce_s[0] = 0.0  # the all-reduce's share: the timed steps only
            n, loss = _step(run, views, generators["sampling"], timer, step)
            _check_parameters(run.model, step)
            if n:
                loss_value = loss
                _check_loss(loss_value, step, training)
            # Every rank stops at the same step: one that stopped alone would leave the
            # others waiting in the next all-reduce.
            done, stopping = step + 1, run.ranks.any(stop.step_ended(), run.device)
            due = stopping or (every and done % every == 0)
            if path is not None and run.ranks.writer and due and done < steps:
                now = (_max(peaks[0], memory.above), _max(peaks[1], memory.absolute))
                checkpoint.save(path, _loop_state(run, done, loss_value, generators, now), cfg_hash)
            if stopping:
                raise KeyboardInterrupt(f"stopped after step {done} of {steps}")
            if progress is not None and run.ranks.writer:
                # The live view on the operator's terminal; it never reaches a record.
                shown = loss_value if training.log_private_loss else None
                progress(
                    StepReport(
                        done,
                        steps,
                        expected,
                        lambda: _epsilon_so_far(run),
                        shown,
                        budget,
                    )
                )
    above, absolute = _max(peaks[0], memory.above), _max(peaks[1], memory.absolute)
    return Trained(loss_value, timer, above, absolute, resumed.start or None)
