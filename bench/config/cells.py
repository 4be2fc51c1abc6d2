"""A suite's grid, the cells it expands to with their identity, and their JSON form."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import identity
from bench.config.public import (
    jsonable,
    public_data_dict,
    public_path,
    public_set,
    public_value,
)
from bench.config.sections import (
    GRID_REQUIRED,
    GRID_SECTIONS,
    DataConfig,
    PrivacyConfig,
    ReportConfig,
    TrainingConfig,
)

#: Run stages: tuning runs (validation split held out, scored on it) and final runs.
STAGES = ("tune", "final")
#: Default std of the Gaussian noise on a tuning run's correct count over the validation split
#: (``tune.score_noise``, in examples): 0.2 points of accuracy on 5,000 examples, and
#: epsilon about 0.35 at delta 1e-5 for one score alone (a Gaussian of sensitivity 1).
SCORE_NOISE = 10.0
#: Default tuning seeds: three, so that a candidate's mean has a spread and a candidate that
#: fails in one seed out of three is seen (issue 27: one seed chose rates beside a cliff).
TUNE_SEEDS = (0, 1, 2)
#: Selection rules: ``stable`` (the default) rejects a candidate that failed or collapsed in any
#: tuning seed, then takes the best mean; ``mean`` takes the best mean over ok runs.
TUNE_RULES = ("stable", "mean")


@dataclass(frozen=True)
class TuneConfig:
    """Per-norm tuning on the validation split (`bench.sweep.protocol`).

    Attributes:
        keys: ``(dotted key, values)`` pairs to try, e.g. ``(("training.lr", (0.5, 1.0)),)``;
            every combination is a candidate.
        seeds: Seeds of each tuning cell.
        overrides: ``(dotted key, value)`` pairs applied to tuning runs only, e.g. a shorter
            budget ``(("training.steps", 40),)``; final runs keep the suite's values.
        score_noise: Std of the Gaussian noise added to each tuning run's number of correct
            validation examples before it leaves the run (sensitivity 1, charged in the
            run's epsilon); the published ``val_acc`` is that noisy count over the split size.
        refine: Once every coarse candidate of a grid point has run, try the geometric
            midpoints between the coarse optimum and its neighbours in each key whose values
            are all positive floats (a sqrt(2) step on a x2 grid; one step beyond an optimum at
            the grid's edge), with the same seeds (`bench.sweep.protocol.refined_values`).
        rule: How a candidate is chosen (`TUNE_RULES`).
    """

    keys: tuple[tuple[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...] = TUNE_SEEDS
    overrides: tuple[tuple[str, Any], ...] = ()
    score_noise: float = SCORE_NOISE
    refine: bool = True
    rule: str = "stable"


@dataclass(frozen=True)
class Cell:
    """One run of a suite: a point of the grid with every config resolved.

    Attributes:
        suite: Name of the suite the cell belongs to.
        backbone: Canonical backbone spec string, e.g. ``wrn16_4[width=0.5]``.
        norm: Canonical norm spec string, e.g. ``group_norm[num_groups=8]``.
        seed: Run seed: model initialisation, sampling and augmentation.
        overrides: The extra grid keys (dotted paths) and their values in this cell.
        data: Data config with the cell's overrides applied.
        privacy: Privacy config with the cell's overrides applied.
        training: Training config with the cell's overrides applied.
        stage: ``final`` (trained on the whole private set, scored on the test set) or
            ``tune`` (validation split held out and scored, test set never read).
        tuned: The tuning values this cell runs at (a candidate in ``tune``, the selected
            ones in ``final``); empty without a ``tune`` section. Already applied to the
            configs, so the run key holds them.
        score_noise: A tuning cell's ``tune.score_noise`` (its validation score is released
            noised); None for a final cell. In the run key when set.
        tuning_history: A final cell of a tuned suite: the accountant history of every tuning
            run its selection read (DP-SGD steps, charges, noisy scores), composed with the
            run's own into ``epsilon_with_tuning``; None without tuning. Not in the run key:
            it follows from the suite's tuning stage.
    """

    suite: str
    backbone: str
    norm: str
    seed: int
    overrides: Mapping[str, Any] = field(hash=False)
    data: DataConfig
    privacy: PrivacyConfig
    training: TrainingConfig
    stage: str = "final"
    tuned: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    score_noise: float | None = None
    tuning_history: tuple[tuple[float, float, int], ...] | None = field(
        default=None, hash=False, compare=False
    )

    @property
    def run_key(self) -> str:
        """The cell's identity in records and folders (`bench.config.identity.run_key`)."""
        return identity.run_key(
            self.backbone,
            self.norm,
            self.seed,
            self.data,
            self.privacy,
            self.training,
            self.stage,
            score_noise=self.score_noise,
        )

    @property
    def checkpoint_hash(self) -> str:
        """What a checkpoint of this cell is tied to (`identity.checkpoint_hash`)."""
        return identity.checkpoint_hash(cell_to_dict(self))


@dataclass(frozen=True)
class Suite:
    """A validated suite: the shared configs and the grid swept over them.

    Attributes:
        name: Lower snake_case identifier used in paths, records and reports.
        description: Free text for the report header.
        data: Data config shared by all cells (before grid overrides).
        privacy: Privacy config shared by all cells (before grid overrides).
        training: Training config shared by all cells (before grid overrides).
        grid: ``(key, values)`` pairs in sweep order: backbone, norm, seed, then the extra
            dotted keys sorted; backbone and norm values are canonical spec strings.
        report: Leaderboard settings.
        tune: Per-norm tuning on the validation split, or None (one stage).
        path: The suite file it was loaded from.
        overrides: The ``--set`` strings applied on top of the file.
        resolve_data: Fills in what a cell's dataset declares (its normalisation statistics,
            its name) after the grid's overrides; the loader passes the dataset registry's
            (`bench.data.resolve_data_config`), which the schema cannot import.
    """

    name: str
    description: str
    data: DataConfig
    privacy: PrivacyConfig
    training: TrainingConfig
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    report: ReportConfig
    path: Path | None = None
    overrides: tuple[str, ...] = ()
    tune: TuneConfig | None = None
    resolve_data: Callable[[DataConfig], DataConfig] | None = field(
        default=None, compare=False, repr=False
    )

    def cells(self) -> list[Cell]:
        """The cartesian product of the grid, backbone outermost, extra keys innermost."""
        keys = [key for key, _ in self.grid]
        cells = []
        for combo in itertools.product(*(values for _, values in self.grid)):
            point = dict(zip(keys, combo, strict=True))
            extras = {k: v for k, v in point.items() if k not in GRID_REQUIRED}
            sections = {s: getattr(self, s) for s in GRID_SECTIONS}
            for section in GRID_SECTIONS:
                changes = {
                    k.partition(".")[2]: v
                    for k, v in extras.items()
                    if k.partition(".")[0] == section
                }
                if changes:
                    sections[section] = dataclasses.replace(sections[section], **changes)
            if self.resolve_data is not None:
                sections["data"] = self.resolve_data(sections["data"])
            cells.append(
                Cell(
                    suite=self.name,
                    backbone=point["backbone"],
                    norm=point["norm"],
                    seed=point["seed"],
                    overrides=extras,
                    **sections,
                )
            )
        return cells


def suite_to_dict(suite: Suite) -> dict[str, Any]:
    """A JSON-ready description of the suite, as written to ``suite.json``."""
    return {
        "name": suite.name,
        "description": suite.description,
        "path": None if suite.path is None else public_path(str(suite.path)),
        "overrides": [public_set(item) for item in suite.overrides],
        "data": public_data_dict(suite.data),
        "privacy": dataclasses.asdict(suite.privacy),
        "training": jsonable(dataclasses.asdict(suite.training)),
        "grid": {
            key: [public_value(key, v) for v in jsonable(list(values))]
            for key, values in suite.grid
        },
        "report": dataclasses.asdict(suite.report),
        "tune": None
        if suite.tune is None
        else {
            "keys": {k: jsonable(list(v)) for k, v in suite.tune.keys},
            "seeds": list(suite.tune.seeds),
            "overrides": {k: jsonable(v) for k, v in suite.tune.overrides},
            "score_noise": suite.tune.score_noise,
            "refine": suite.tune.refine,
            "rule": suite.tune.rule,
        },
    }


def cell_to_dict(cell: Cell) -> dict[str, Any]:
    """A JSON-ready description of one cell, as stored in its record."""
    return {
        "run_key": cell.run_key,
        **{name: getattr(cell, name) for name in ("suite", "backbone", "norm", "seed")},
        "overrides": {k: public_value(k, v) for k, v in jsonable(dict(cell.overrides)).items()},
        "data": public_data_dict(cell.data),
        "privacy": dataclasses.asdict(cell.privacy),
        "training": jsonable(dataclasses.asdict(cell.training)),
        "stage": cell.stage,
        "tuned": jsonable(dict(cell.tuned)),
        # Only where set, so that the config (and checkpoint hash) of a final cell stays as it was.
        **({} if cell.score_noise is None else {"score_noise": cell.score_noise}),
    }
