"""A resolved cell set up for training: data, model, streams, and the one DP-step builder."""

from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass
from typing import Any

import torch
from opacus.accountants import RDPAccountant
from torch import nn

import norms
from bench.config import Cell, TrainingConfig
from bench.data import DeviceData
from bench.errors import ConfigError
from bench.plan import CellPlan, build_model, check_loaded_size, plan_cell, resolve_cell_norm
from bench.seeds import is_secret, run_stream, seed_global
from bench.sparsity import PublicData, Sparsity
from bench.train import data_cache
from bench.train.ema import EMA, ema_model
from bench.train.ghost import OpacusGhostStep
from bench.train.ranks import SINGLE, Ranks
from bench.train.schedule import lr_scheduler
from bkclip import DPSGDStep, SGDStep, make_optimizer
from norms.lifecycle import RunData

#: The per-sample-gradient mode of Opacus' fast gradient clipping (`OpacusGhostStep`), which
#: `build_dp_step` offers beside `bkclip.MODES` for the perf checks' comparison.
GHOST = "ghost"


def training_optimizer(model: nn.Module, training: TrainingConfig) -> torch.optim.Optimizer:
    """The base optimiser of the cell's recipe: every step, DP or not, timed or trained, uses
    these arguments (optimiser, learning rate, momentum, Nesterov, weight decay)."""
    return make_optimizer(
        model.parameters(),
        optimizer=training.optimizer,
        lr=training.lr,
        momentum=training.momentum,
        nesterov=training.nesterov,
        weight_decay=training.weight_decay,
    )


def build_dp_step(
    model: nn.Module,
    training: TrainingConfig,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int | None = None,
    max_physical_batch: int | None = None,
    mode: str | None = None,
    generator: torch.Generator | None = None,
    secure_mode: bool = False,
    sparsity: Sparsity | None = None,
    ranks: Ranks = SINGLE,
) -> DPSGDStep | OpacusGhostStep:
    """The DP-SGD step of ``training``'s recipe on ``model``: the one builder that training,
    the runner's step timing and the perf checks share, so that the timed step is the trained one.

    Args:
        expected_batch_size: The expected logical batch (default: ``training.batch_size``).
        max_physical_batch: Examples per pass (default: ``training.max_physical_batch``).
        mode: ``hooks``, ``functorch``, ``bk`` or `GHOST` (default:
            ``training.grad_sample_mode``).
        generator: The noise's generator.
        secure_mode: Opacus' secure-mode noise (with an unpredictable ``generator``).
        sparsity: Pre-pruning and gradient dropping (not with `GHOST`).
        ranks: The processes of the cell; each passes its share of the logical batch (whole
            physical batches), and the clipped sums are summed over them, in the order one
            process adds them, before the noise (`bench.train.ranks`).

    Raises:
        ValueError: `GHOST` asked for with secure-mode noise or sparsity, which it lacks.
    """
    dp: dict[str, Any] = {
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": max_grad_norm,
        "expected_batch_size": expected_batch_size or training.batch_size,
        "max_physical_batch": max_physical_batch or training.max_physical_batch,
        "precision": training.precision,
        "generator": generator,
        "reduce": ranks.sum_in_order if ranks.distributed else None,
    }
    mode = mode or training.grad_sample_mode
    if mode == GHOST and (secure_mode or sparsity is not None):
        raise ValueError("the ghost step has no secure-mode noise and no sparsity")
    optimizer = training_optimizer(model, training)
    if mode == GHOST:
        return OpacusGhostStep(model, optimizer, **dp)
    return DPSGDStep(model, optimizer, mode=mode, secure_mode=secure_mode, sparsity=sparsity, **dp)


def build_sgd_step(model: nn.Module, training: TrainingConfig) -> SGDStep:
    """The non-private step of the same recipe (`training_optimizer`), for the DP/non-DP ratio."""
    return SGDStep(
        model,
        training_optimizer(model, training),
        max_physical_batch=training.max_physical_batch,
        precision=training.precision,
    )


@dataclass
class Run:
    """A cell set up for training: its data, model, plan and the objects the loop drives.

    The norm is the plan's, resolved once (`bench.plan.resolve_cell_norm`).
    """

    cell: Cell
    device: torch.device
    data: DeviceData
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
    ranks: Ranks = SINGLE

    @property
    def norm(self) -> norms.ResolvedNorm:
        """The cell's resolved norm."""
        return self.plan.norm

    def stream(self, purpose: str) -> torch.Generator:
        """This run's generator for ``purpose`` (`bench.seeds.run_stream`)."""
        return cell_stream(self.cell, self.data, purpose)

    def release(self) -> None:
        """Drop the DP model, its per-example machinery, its gradients, its EMA and its
        sparsity, so that the non-private reference runs with only the data and its own model
        on the device."""
        for p in self.model.parameters():
            p.grad = None
        self.model = self.dp_step = self.ema = self.scheduler = None  # type: ignore[assignment]
        self.sparsity = None  # type: ignore[assignment]  # it holds the DP model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def cell_stream(cell: Cell, data: DeviceData, purpose: str) -> torch.Generator:
    """The seeded stream of ``purpose`` (`DeviceData.generator`) for a purpose that is not
    secret; for a secret one (`bench.seeds.SECRET_STREAMS`) the cell's own stream, keyed by its
    run key, or under ``privacy.secure_noise`` an unpredictable one."""
    if not is_secret(purpose):
        return data.generator(cell.seed, purpose)
    return run_stream(
        cell.seed,
        purpose,
        data.device,
        cell_key=cell.run_key,
        secure=cell.privacy.secure_noise,
    )


def _prepared(cell: Cell, data: DeviceData, model: nn.Module, norm: norms.ResolvedNorm):
    """The model's sparsity and the norm's run data, the norm prepared on the model.

    Pre-pruning comes before the norm's preparation, so statistics describe the pruned net.
    """
    training = cell.training
    public = (
        None
        if data.public_x is None
        else PublicData(data.public_x, data.public_y, data.prepare_eval, training.eval_batch_size)
    )
    sparsity = Sparsity(
        model,
        prune=training.pre_prune,
        drop=training.grad_drop,
        streams=lambda purpose: cell_stream(cell, data, purpose),
        public=public,
    )
    run_data = RunData(
        private_x=data.train_x,
        public_x=data.public_x,
        to_input=data.prepare_eval,
        batch_size=training.eval_batch_size,
        generator=lambda purpose: cell_stream(cell, data, f"norm.{purpose}"),
    )
    norm.prepare(model, run_data)
    return sparsity, run_data


def check_ranks(cell: Cell, ranks: Ranks) -> None:
    """Refuse ``privacy.secure_noise`` on several processes, in one line.

    W processes reproduce one because every rank draws the secret streams (Poisson sampling,
    noise, a norm's DP statistics) from identically seeded generators (`bench.train.ranks`).
    Under ``secure_noise`` each process would seed them from its own ``os.urandom``: the ranks
    would clip their shares of different Poisson samples (an example could be clipped on two
    ranks in one step, twice the sensitivity the accountant charges) and add different noise.

    Raises:
        ConfigError: ``secure_noise`` with ``ranks.world_size`` above 1.
    """
    if ranks.distributed and cell.privacy.secure_noise:
        raise ConfigError(
            f"privacy.secure_noise: true on {ranks.world_size} processes: each would seed the "
            "secret streams (Poisson sampling, noise) from its own os.urandom, so they would "
            "clip shares of different samples (an example twice in one step) and add different "
            "noise; run secure-noise cells on one process (--nproc 1)"
        )


def setup_run(cell: Cell, device: torch.device, ranks: Ranks = SINGLE) -> Run:
    """Data on the device, the model, its norm prepared, the privacy plan and the DP step.

    The cell is resolved once here (norm, sizes, calibration: `bench.plan`) and the plan is
    what the rest of the run reads. On several processes (``ranks``) every one sets up the
    same run (same data, model, streams, norm preparation) and the DP step sums the
    processes' clipped sums before its noise.

    Raises:
        ConfigError: The norm does not declare the cell's grad-sample mode, or
            ``privacy.secure_noise`` on several processes (`check_ranks`).
    """
    check_ranks(cell, ranks)
    started = time.perf_counter()
    training, privacy = cell.training, cell.privacy
    norm = resolve_cell_norm(cell)
    dataset = data_cache.cached_dataset(cell.data)
    # A tuning run holds the validation split out and is scored on it; the test set is never
    # copied to the device, so nothing in it can read the test set.
    data = DeviceData(dataset, device, normalize=cell.data.normalize, holdout=cell.stage == "tune")
    seed_global(cell.seed, "init")
    model = build_model(cell, dataset.num_classes, device, norm, dataset.channels)
    plan = plan_cell(cell, norm=norm, model=model)
    check_loaded_size(plan, data.num_private)
    sparsity, run_data = _prepared(cell, data, model, norm)
    # The untrained model for the non-private measurement, copied only when it is wanted.
    initial = copy.deepcopy(model) if training.measure_nonprivate else None
    dp_step = build_dp_step(
        model,
        training,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=plan.batch_size,
        generator=cell_stream(cell, data, "noise"),
        secure_mode=privacy.secure_noise,
        sparsity=sparsity,
        ranks=ranks,
    )
    # Opacus' accountant records every step the optimizer actually takes, with its (sigma, q).
    accountant = RDPAccountant()
    dp_step.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
    scheduler = lr_scheduler(dp_step.optimizer.original_optimizer, training, plan.steps)
    ema = ema_model(model, training.ema)
    return Run(
        cell=cell,
        device=device,
        data=data,
        model=model,
        plan=plan,
        initial=initial,
        dp_step=dp_step,
        accountant=accountant,
        scheduler=scheduler,
        ema=ema,
        started=started,
        sparsity=sparsity,
        run_data=run_data,
        ranks=ranks,
    )
