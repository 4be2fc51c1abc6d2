"""Planning: turn a suite's cells into what each run will be (N, q, steps, sigma, charges, classes).

The one place a cell is resolved, sized and its privacy calibrated. Suite validation
(`data_size`, `size_cell`), the runner's preflight (`plan_cells`), ``--dry-run`` and training
itself (`plan_cell` on the model it trains, `bench.train.setup`) all read it, so what is
checked, shown and run agree. The norm spec is parsed once per cell (`resolve_cell_norm`) and
the `CellPlan` carries the resolved norm down. Sizing reads no image: the data is counted, not
decoded.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.config import Cell, DataConfig
from bench.errors import ConfigError, DataError, PrivacyError
from bench.privacy_tuning import ScoreCharge
from bench.results.record import grid_value_text

if TYPE_CHECKING:
    from bench.privacy import Calibration
    from norms import ResolvedNorm


@dataclass(frozen=True)
class DataSize:
    """The sizes of a data config, counted without decoding.

    Attributes:
        n_train: Training examples, public split included.
        n_public: Examples held out as public data.
        num_classes: Number of classes.
        n_val: Private examples held out for tuning (the validation split).
        channels: Image channels the dataset declares (a backbone's ``in_chans``).
        image_size: Image side the dataset declares, or None where only decoding tells.
    """

    n_train: int
    n_public: int
    num_classes: int
    n_val: int = 0
    channels: int = 3
    image_size: int | None = None

    @property
    def n_private(self) -> int:
        """N: the private training set size (validation split included)."""
        return self.n_train - self.n_public

    def n_trained(self, stage: str) -> int:
        """N for a run of ``stage``: a tuning run trains without the validation split."""
        return self.n_private - (self.n_val if stage == "tune" else 0)


@functools.lru_cache(maxsize=64)
def data_size(cfg: DataConfig) -> DataSize:
    """Count ``cfg``'s examples and classes (an imagefolder costs one directory walk).

    Raises:
        DataError: When the data cannot be counted (names the path).
    """
    from bench.data import count_classes, count_train_examples, image_shape  # torch: only here

    channels, side = image_shape(cfg)
    n_train, n_classes = count_train_examples(cfg), count_classes(cfg)
    return DataSize(n_train, cfg.public_split, n_classes, cfg.val_split, channels, side)


@dataclass(frozen=True)
class CellPlan:
    """What one cell will run, fixed before training.

    Attributes:
        cell: The cell.
        n_private: N, the private examples the run trains on.
        num_classes: Classes of the data.
        sample_rate: q = b / N, b the expected batch the run draws (`batch_size`).
        steps: DP-SGD steps.
        batch_size: b: the suite's batch B, or ``privacy.simulate_batch_size`` in a TAN
            simulation.
        calibrations: The noise calibration under each accountant asked for, at the suite's
            batch B (for a TAN simulation: sigma_ref, which `noise_multiplier` scales by b/B).
        charges: The run's other privacy costs (a norm's preparation; a tuning run's noisy
            validation score, `bench.privacy_tuning.ScoreCharge`), composed into the
            calibration.
        norm: The cell's norm, resolved once (`resolve_cell_norm`).
    """

    cell: Cell
    n_private: int
    num_classes: int
    sample_rate: float
    steps: int
    batch_size: int = 0
    calibrations: Mapping[str, Calibration] = field(default_factory=dict)
    charges: tuple = ()
    norm: ResolvedNorm | None = None

    @property
    def calibration(self) -> Calibration:
        """The calibration under the suite's accountant (the one the run uses)."""
        return self.calibrations[self.cell.privacy.accountant]

    @property
    def dp_valid(self) -> bool:
        """False for a TAN simulation: it is not private at the target."""
        return self.cell.privacy.simulate_batch_size is None

    @property
    def noise_multiplier(self) -> float:
        """The run's sigma: the calibrated one, or sigma_ref * b / B in a TAN simulation."""
        return self.calibration.noise_multiplier * self.batch_size / self.cell.training.batch_size


def size_cell(cell: Cell, size: DataSize) -> tuple[float, int]:
    """``(q, steps)`` the privacy target is calibrated at: the suite's batch B over the N the
    run trains on (a TAN simulation keeps these steps and draws b instead of B)."""
    n = size.n_trained(cell.stage)
    return cell.training.batch_size / n, cell.training.num_steps(n)


def run_batch(cell: Cell) -> int:
    """The expected batch the run draws: B, or b in a TAN simulation."""
    return cell.privacy.simulate_batch_size or cell.training.batch_size


def resolve_cell_norm(cell: Cell) -> ResolvedNorm:
    """The cell's norm, its spec parsed once, checked against the cell's grad-sample mode.

    Raises:
        NormError: The spec names no registered norm or a wrong parameter.
        ConfigError: The norm does not declare the cell's grad-sample mode.
    """
    import norms  # torch: only when resolving

    norm = norms.resolve_norm(cell.norm)
    check_grad_sample_mode(cell, norm)
    return norm


def plan_cell(
    cell: Cell,
    *,
    norm: ResolvedNorm | None = None,
    model=None,
    accountants: Sequence[str] | None = None,
    size: DataSize | None = None,
) -> CellPlan:
    """Size a cell and calibrate DP-SGD's noise so that its whole run spends the target.

    Args:
        norm: The cell's norm from `resolve_cell_norm` (default: resolved and checked here).
        model: The cell's model; built on the CPU when not given (the privacy charge of a
            norm's preparation depends on the architecture only, never on data).
        accountants: Calibrate under each of these (default: the suite's accountant only).
        size: The data's size (default: counted).

    Raises:
        ConfigError: The norm does not declare the cell's grad-sample mode.
        PrivacyError: No noise multiplier meets the target.
    """
    from bench.privacy import calibrate_noise  # Opacus: only when planning

    norm = norm or resolve_cell_norm(cell)
    size = size or data_size(cell.data)
    q, steps = size_cell(cell, size)
    n = size.n_trained(cell.stage)
    base = {
        "cell": cell,
        "n_private": n,
        "num_classes": size.num_classes,
        "batch_size": run_batch(cell),
        "norm": norm,
    }
    q_run = run_batch(cell) / n
    if model is None:
        model = build_model(cell, size.num_classes, "cpu", norm, size.channels)
    charge = norm.charge(model, n)
    charges = (charge,) if charge else ()
    if cell.score_noise is not None:  # a tuning run releases its validation score, noised
        charges += (ScoreCharge(cell.score_noise, size.n_val),)
    extra = [c.history_entry() for c in charges]
    calibrations = {
        acc: calibrate_noise(
            cell.privacy.epsilon, cell.privacy.delta, q, steps, extra=extra, accountant=acc
        )
        for acc in (accountants or (cell.privacy.accountant,))
    }
    return CellPlan(
        **base, sample_rate=q_run, steps=steps, calibrations=calibrations, charges=charges
    )


def check_loaded_size(plan: CellPlan, n_loaded: int) -> None:
    """Refuse a run whose loaded private set is not the N its sampling rate was calibrated at.

    q = B / N and the noise that spends the target both come from the N counted without
    decoding (`data_size`); a run that trains on another N samples at another rate than its
    accounting says (the epsilon reported would not be the epsilon spent). They part when the
    data changed between counting and loading, or a decoded-image cache is stale.

    Args:
        plan: The cell's plan.
        n_loaded: The private examples the run actually holds for training.

    Raises:
        DataError: Naming both numbers and the data config.
    """
    if n_loaded == plan.n_private:
        return
    d = plan.cell.data
    raise DataError(
        f"data (source={d.source}, root={d.root}, num_train={d.num_train}, "
        f"public_split={d.public_split}, val_split={d.val_split}, stage={plan.cell.stage}): "
        f"{n_loaded} private training examples were loaded, but the sampling rate "
        f"q={plan.sample_rate:.6g} and the noise were calibrated for N={plan.n_private}; "
        f"the data changed since it was counted or its cache at data.cache_dir is stale"
    )


def plan_cells(cells: Iterable[Cell], accountants: Sequence[str] | None = None) -> list[CellPlan]:
    """`plan_cell` for every cell, building one CPU model per (backbone, norm, classes) and
    dropping it before the next (the calibrations themselves are memoised in
    `bench.privacy`).

    Raises:
        PrivacyError: Naming the first cell whose target cannot be met.
    """
    plans: list[CellPlan] = []
    models: dict[tuple, object] = {}
    for cell in cells:
        norm = resolve_cell_norm(cell)
        size = data_size(cell.data)
        key = (cell.backbone, cell.norm, size.num_classes, size.channels)
        if key not in models:
            models.clear()
            models[key] = build_model(cell, size.num_classes, "cpu", norm, size.channels)
        model = models[key]
        try:
            plans.append(
                plan_cell(cell, norm=norm, model=model, accountants=accountants, size=size)
            )
        except PrivacyError as err:
            raise PrivacyError(f"{err} (cell {cell_label(cell)})") from None
    return plans


#: The grad-sample mode every norm may run in: the book-keeping clipper itself refuses, before
#: the first step, any trainable layer that has no rule (or opted-in fallback).
OPEN_MODE = "bk"


def grad_sample_mode_problem(norm: str | ResolvedNorm, mode: str) -> tuple[str, str] | None:
    """Why ``norm`` may not run in grad-sample ``mode`` and the modes it may, or None.

    An Opacus mode (``hooks``, ``functorch``) must be one the norm declares on `register_norm`
    (``grad_sample_modes``: the modes its per-sample gradients were proven in against the
    oracle); ``bk`` is open to every norm (`OPEN_MODE`). A resolved norm is not parsed again.
    """
    import norms  # torch: only when checking

    declared = norms.resolve_norm(norm).spec.grad_sample_modes
    if mode == OPEN_MODE or mode in declared:
        return None
    reason = (
        f"norm {norm} does not declare grad-sample mode {mode!r} (its per-sample gradients "
        f"are proven against the oracle in {', '.join(declared) or 'no Opacus mode'} only)"
    )
    return reason, ", ".join([OPEN_MODE, *declared])


def check_grad_sample_mode(cell: Cell, norm: ResolvedNorm | None = None) -> None:
    """Refuse a cell whose norm does not declare its grad-sample mode.

    Args:
        norm: The cell's resolved norm (default: parsed from the cell's spec).

    Raises:
        ConfigError: Naming the norm, the mode and the modes allowed.
    """
    mode = cell.training.grad_sample_mode
    problem = grad_sample_mode_problem(norm or cell.norm, mode)
    if problem:
        reason, allowed = problem
        raise ConfigError(
            f"{reason} (cell {cell_label(cell)})",
            key="training.grad_sample_mode",
            given=mode,
            allowed=allowed,
        )


def build_model(
    cell: Cell, num_classes: int, device, norm: ResolvedNorm | None = None, in_chans: int = 3
):
    """The cell's backbone with its norm, on ``device``.

    Args:
        norm: The cell's resolved norm (default: parsed from the cell's spec).
        in_chans: Image channels, as the data declares them (1 for grey images).
    """
    from bench.backbones import create_backbone  # torch: only when building

    spec = norm or cell.norm
    model = create_backbone(cell.backbone, norm=spec, num_classes=num_classes, in_chans=in_chans)
    return model.to(device)


def cell_label(cell: Cell) -> str:
    """``backbone norm seed=s extra=v`` for messages and progress output."""
    extra = ",".join(f"{k}={grid_value_text(v)}" for k, v in sorted(cell.overrides.items()))
    return f"{cell.backbone} {cell.norm} seed={cell.seed}" + (f" {extra}" if extra else "")
