"""The suite schema: one frozen config dataclass per section, with its impossible values."""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from bench.errors import ConfigError

#: The top-level keys of a suite file; ``name`` and ``grid`` are required.
TOP_LEVEL_KEYS = ("name", "description", "data", "privacy", "training", "grid", "tune", "report")
#: Grid keys every suite sweeps; any other grid key is a dotted path such as ``training.lr``.
GRID_REQUIRED = ("backbone", "norm", "seed")
#: The norm every other is compared with unless a suite says otherwise, and the norm a backbone
#: gets when none is named: GroupNorm, the DP-safe norm of De et al.'s and Klause et al.'s recipes.
DEFAULT_NORM = "group_norm"
Problem = tuple[str, str, str]  # (field, what is wrong, what is allowed)


def alpha_problem(alpha: object) -> str | None:
    """What is wrong with a family-wise significance level, or None when it is valid.

    Valid is a real number (not a bool) with 0 < alpha < 0.5: from 0.5 up, a falsely
    "significant" difference is at least as likely as not. Suite validation and the report
    share this one rule.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        return "must be a number"
    if not 0 < alpha < 0.5:  # also rejects NaN
        return "must be in (0, 0.5)"
    return None


#: The form of ``report.primary``.
PRIMARY_FORM = "key=value pairs of swept grid keys joined by ',', e.g. training.steps=120"


def primary_pairs(text: str) -> list[tuple[str, str]]:
    """``report.primary`` split into ``(key, value text)`` pairs (whitespace stripped)."""
    pairs = []
    for part in text.split(","):
        key, _, value = part.partition("=")
        pairs.append((key.strip(), value.strip()))
    return pairs


def primary_problem(text: str) -> str | None:
    """What is wrong with a ``report.primary`` grid point's form, or None."""
    pairs = primary_pairs(text)
    if any(
        not key or not value or "=" not in part
        for (key, value), part in zip(pairs, text.split(","), strict=True)
    ):
        return "must be key=value pairs"
    if len({key for key, _ in pairs}) != len(pairs):
        return "names a key twice"
    return None


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are split and how they are standardised.

    Attributes:
        source: A registered dataset (``bench list``), as a spec string: ``synthetic``
            (generated, learnable), ``cifar10``, ``cifar100[labels=coarse]``, ``svhn``,
            ``mnist[pad=2]``, ``fashion_mnist``, ``imagenet32``, ``imagefolder``
            (``root/train/<class>/*`` and ``root/test/<class>/*``) or a plugin's.
        root: Data directory; required for every source that reads files. ``~`` is expanded.
        download: Let torchvision download the publisher's files into ``root`` when missing.
        verify_checksum: Check the publisher's files against their published checksums
            (false for tests and private copies, whose sizes are then counted by decoding).
        dataset: Human name for reports; None gives the name the dataset declares
            (``CIFAR-100``, ``SVHN``, the basename of an imagefolder root).
        num_train: Training examples, public split included: the size of the synthetic set
            (None: 2048), a cap for the other sources taken as a deterministic subset
            (None: all).
        num_test: Test examples: the synthetic size (None: 512) or a cap (None: all).
        num_classes: Classes of the synthetic set (ignored by the other sources).
        image_size: Side of the synthetic images in pixels (ignored by the other sources).
        public_split: Training examples held out as public data: excluded from the private
            training set and read only by norms that need public data
            (e.g. a BatchNorm with public statistics).
        val_split: Private training examples held out for tuning (the ``tune`` section): tuning
            runs train without them and are scored on them; final runs train on them too and
            are scored on the test set, which tuning never reads. Disjoint from the public
            split.
        split_seed: Fixes the public split, the validation split, any subset and the synthetic
            images; independent of the run seeds so that every norm and seed sees the same
            data.
        normalize: Standardise inputs with ``mean`` and ``std`` after scaling to [0, 1].
        mean: Per-channel mean of the [0, 1] inputs, one per channel; None: the constants
            the dataset declares (CIFAR-10's for ``cifar10``, ``synthetic`` and ``imagefolder``),
            filled in when a suite file is read.
        std: Per-channel standard deviation of the [0, 1] inputs; None: the dataset's.
        cache_dir: Where decoded imagefolder tensors are cached; None disables the cache.
    """

    source: str = "synthetic"
    root: str | None = None
    download: bool = False
    verify_checksum: bool = True
    dataset: str | None = None
    num_train: int | None = None
    num_test: int | None = None
    num_classes: int = 10
    image_size: int = 32
    public_split: int = 0
    val_split: int = 0
    split_seed: int = 0
    normalize: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    cache_dir: str | None = "~/.cache/dp-norm-bench"

    SYNTHETIC_NUM_TRAIN: ClassVar[int] = 2048
    SYNTHETIC_NUM_TEST: ClassVar[int] = 512

    def __post_init__(self) -> None:
        # Expanded and normalised once here so that file access, records and run keys all see
        # the same path, however it is spelled (``x/``, ``./x``, ``a/../x``). A published root
        # was already normal once expanded, so normalising moves no published run key.
        for name in ("root", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, str) and value:
                object.__setattr__(self, name, os.path.normpath(os.path.expanduser(value)))

    @property
    def dataset_name(self) -> str:
        """The human name of the data for reports."""
        if self.dataset:
            return self.dataset
        if self.source == "imagefolder" and self.root:
            return os.path.basename(os.path.normpath(self.root))
        return {"synthetic": "synthetic", "cifar10": "CIFAR-10"}.get(self.source, self.source)

    @property
    def train_size(self) -> int | None:
        """Training examples before the public split is taken out; None means all there are."""
        if self.num_train is None and self.source == "synthetic":
            return self.SYNTHETIC_NUM_TRAIN
        return self.num_train

    @property
    def test_size(self) -> int | None:
        """Test examples; None means all there are."""
        if self.num_test is None and self.source == "synthetic":
            return self.SYNTHETIC_NUM_TEST
        return self.num_test

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        for name in ("num_train", "num_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                yield name, "must be positive", "an integer >= 1, or null"
        if self.num_classes < 2:
            yield "num_classes", "must be at least 2", "an integer >= 2"
        if self.image_size < 8:
            yield "image_size", "is too small for a ResNet", "an integer >= 8"
        if self.public_split < 0:
            yield "public_split", "must not be negative", "an integer >= 0"
        if self.val_split < 0:
            yield "val_split", "must not be negative", "an integer >= 0"
        if self.split_seed < 0:
            yield "split_seed", "must not be negative", "an integer >= 0"
        if self.std is not None and any(s <= 0 for s in self.std):
            yield "std", "must be positive", "one number > 0 per image channel"


@dataclass(frozen=True)
class PrivacyConfig:
    """The (epsilon, delta) target of every run and the per-example clipping bound.

    Attributes:
        epsilon: Target epsilon; the noise multiplier is calibrated so that the run spends it.
        delta: Target delta; must be below 1/N (N private training examples), since a larger
            delta allows mechanisms that publish a whole example.
        accountant: ``prv`` (tight, the default) or ``rdp``; the other is reported too. A run
            is calibrated and reported under one accountant: if PRV cannot answer, under RDP
            throughout (the record says so).
        max_grad_norm: Per-example gradient clipping bound C.
        secure_noise: Draw the secret randomness of the run, DP-SGD's noise, its Poisson
            sampling and a norm's DP statistics, from the operating system's entropy
            (``os.urandom``) rather than from the run seed, with Opacus' secure-mode noise
            (against floating-point attacks): publishing the seed then publishes none of it.
            The run is not reproducible. False (the default): every stream follows the seed,
            so anyone with the seed and the data can recompute the noise.
        simulate_batch_size: TAN simulation (Sander, Stock and Sablayrolles, ICML 2023): run at
            expected batch b with noise multiplier sigma_ref * b / B, sigma_ref being the one
            calibrated for the suite's batch B and the target, and the same steps; at fixed
            steps accuracy follows sigma / B, so this predicts the accuracy of the private run
            at a fraction of its cost. Such a run is NOT private at the target: its record says
            ``dp_valid: false`` and it never shares a leaderboard table with DP runs. None
            (the default): a DP run.
    """

    epsilon: float = 8.0
    delta: float = 1e-5
    accountant: Literal["prv", "rdp"] = "prv"
    max_grad_norm: float = 1.0
    secure_noise: bool = False
    simulate_batch_size: int | None = None

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        if self.epsilon <= 0:
            yield "epsilon", "must be positive", "a number > 0"
        if not 0 < self.delta < 1:
            yield "delta", "must be in (0, 1)", "0 < delta < 1/N"
        if self.max_grad_norm <= 0:
            yield "max_grad_norm", "must be positive", "a number > 0"
        if self.simulate_batch_size is not None and self.simulate_batch_size < 1:
            yield "simulate_batch_size", "must be positive", "an integer >= 1, or null"


#: How `PruneConfig` chooses the weights to prune: at random, by the magnitude of the initial
#: weights, or by SNIP's connection saliency on the public split.
PRUNE_METHODS = ("random", "magnitude", "snip_public")
#: How `GradDropConfig` chooses the output channels to drop: at random at every step, or by
#: the public data's gradient, refreshed every ``refresh`` steps.
GRAD_DROP_METHODS = ("random", "public")


@dataclass(frozen=True)
class PruneConfig:
    """Pre-pruning (Adamczewski et al. 2023, "parameter freezing"): a fixed mask, chosen before
    training without reading private data, zeroes ``rate`` of the weights of every conv and
    linear layer but the stem conv and the classifier (`bench.sparsity`).

    Attributes:
        rate: Fraction of each pruned layer's weights set to zero, in [0, 1).
        method: ``random``, ``magnitude`` (smallest initial weights) or ``snip_public``
            (smallest |w * dL/dw| on the public split; needs ``data.public_split``).
    """

    rate: float
    method: Literal["random", "magnitude", "snip_public"] = "random"

    def __str__(self) -> str:
        return f"{self.method}:{self.rate:g}"

    def problems(self) -> Iterator[Problem]:
        if not 0 <= self.rate < 1:
            yield "rate", "must be in [0, 1)", "a fraction 0 <= rate < 1"


@dataclass(frozen=True)
class GradDropConfig:
    """Gradient dropping (Adamczewski et al. 2023, "parameter selection"): at every step
    ``rate`` of the output channels of every trainable layer are dropped, neither clipped nor
    noised nor updated (`bench.sparsity`); the choice reads no private data.

    Attributes:
        rate: Fraction of each layer's output channels dropped at each step, in [0, 1).
        method: ``random`` (a fresh draw every step from a dedicated stream) or ``public``
            (keep the channels with the largest gradient norm on the public split, computed
            with the current weights every ``refresh`` steps; needs ``data.public_split``).
        refresh: Steps between two public-saliency computations (``public`` only).
        public_examples: Public examples the ``public`` saliency is computed on (the first
            ones of the public split).
    """

    rate: float
    method: Literal["random", "public"] = "random"
    refresh: int = 10
    public_examples: int = 256

    def __str__(self) -> str:
        # The same text as `bench.results.record.grid_value_text` gives the record's mapping.
        if self.method == "random":
            return f"random:{self.rate:g}"
        return f"public:{self.rate:g},public_examples={self.public_examples},refresh={self.refresh}"

    def problems(self) -> Iterator[Problem]:
        if not 0 <= self.rate < 1:
            yield "rate", "must be in [0, 1)", "a fraction 0 <= rate < 1"
        if self.refresh < 1:
            yield "refresh", "must be positive", "an integer >= 1"
        if self.public_examples < 1:
            yield "public_examples", "must be positive", "an integer >= 1"
        # A random choice reads neither; a value set there would make two cells that differ
        # in their keys only, and read the same in every table.
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("refresh", "public_examples"):
            if self.method == "random" and getattr(self, name) != defaults[name]:
                yield name, "is read by method public only", f"method: public, or leave {name} out"


@dataclass(frozen=True)
class TrainingConfig:
    """The DP-SGD recipe: sampling, optimiser, schedule, augmentation and measurement.

    Attributes:
        batch_size: Expected logical batch size B; each example is included independently with
            probability q = B/N, so the actual size varies from step to step.
        max_physical_batch: Most examples (each with its ``augmult`` views) in one forward and
            backward pass; bounds memory without changing the maths.
        steps: Number of DP-SGD steps; exactly one of ``steps`` and ``epochs`` is set.
        epochs: Length in expected passes over the private set: ``ceil(epochs * N / B)`` steps.
        optimizer: ``sgd`` or ``adam``.
        lr: Peak learning rate.
        momentum: SGD momentum (0 in De et al.'s recipe).
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 weight decay applied by the optimiser.
        lr_schedule: ``constant``, ``cosine`` (to 0 at the last step) or ``step`` (multiply by
            ``lr_gamma`` at each milestone).
        lr_milestones: Fractions of the run, in (0, 1) and increasing, where ``step`` decays.
        lr_gamma: Factor applied at each ``step`` milestone.
        warmup_steps: Linear warm-up from 0 to ``lr`` over this many steps.
        augment: Reflect-pad, random crop and random horizontal flip on the device.
        crop_padding: Pixels of reflect padding before the random crop.
        augmult: Augmentation multiplicity K: views per example whose losses are averaged
            before the per-example gradient is taken, so they share one clipped gradient.
        ema: Decay of the exponential moving average of the weights evaluated at the end
            (warm-up ``min(ema, (1 + t) / (10 + t))``); None evaluates the raw weights.
        precision: ``fp32`` or ``bf16`` autocast for forward and backward.
        grad_sample_mode: How per-sample gradients are clipped: ``hooks`` and ``functorch`` (Opacus'
            per-sample-gradient paths) or ``bk`` (this project's book-keeping clipper, one backward
            pass; see ``bkclip``).
        eval_batch_size: Batch size for test-set evaluation.
        throughput_warmup_steps: Steps run before throughput is timed (excluded).
        throughput_steps: Steps timed for the steady-state throughput.
        measure_nonprivate: Also time the same model without DP for the DP/non-DP ratio.
        max_loss: With ``divergence_check: private_loss``, a training loss above this, or not
            finite, stops the run as diverged; read by no other check.
        divergence_check: What stops a run as diverged (it publishes no model and no accuracy,
            and its record says ``diverged``). ``parameters``: a parameter that is not finite
            after an update; the parameters follow from the noised updates the accounting
            already releases, so the stop reads no private data beyond the run's release.
            ``private_loss``: also the un-noised loss of a private batch (``max_loss``); whether
            and when a run stops is then a data-dependent release outside the accounting, and
            every record of the run lists ``diverged`` in ``nonprivate_diagnostics``.
        log_private_loss: Put the un-noised training loss of the last private batch into the
            record (``final_train_loss``) and the divergence message. It is not DP: records
            say so in ``nonprivate_diagnostics``. Off by default; it never changes the run.
        checkpoint_every: Write a checkpoint every this many steps (not after the last), from
            which a killed or requeued run resumes with the result it would have had
            (`bench.checkpoint`); None writes none. The default bounds the work lost to a few
            minutes of the full recipe on a GPU. It never changes the run or its key.
        save_model: Save the evaluated weights (the EMA's when ``ema`` is set) of a finished
            run as ``models/<run_key>.pt`` next to the records (a ``state_dict``, loadable with
            ``torch.load(weights_only=True)``); the record gives its path in ``model_path``.
            Like the accuracy, they are a DP release (of a ``dp_valid`` run).
        pre_prune: Pre-pruning before training (`PruneConfig`), or None.
        grad_drop: Gradient dropping at every step (`GradDropConfig`), or None.
    """

    batch_size: int = 256
    max_physical_batch: int = 128
    steps: int | None = None
    epochs: float | None = None
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.5
    warmup_steps: int = 0
    augment: bool = True
    crop_padding: int = 4
    augmult: int = 1
    ema: float | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_sample_mode: Literal["hooks", "functorch", "bk"] = "bk"
    eval_batch_size: int = 1024
    throughput_warmup_steps: int = 2
    throughput_steps: int = 5
    measure_nonprivate: bool = True
    max_loss: float = 1e4
    divergence_check: Literal["parameters", "private_loss"] = "parameters"
    log_private_loss: bool = False
    checkpoint_every: int | None = 200
    save_model: bool = False
    pre_prune: PruneConfig | None = None
    grad_drop: GradDropConfig | None = None

    def num_steps(self, n_private: int) -> int:
        """The number of DP-SGD steps for a private training set of ``n_private`` examples."""
        if self.steps is not None:
            return self.steps
        if self.epochs is None:
            raise ConfigError("one of training.steps and training.epochs must be set")
        return math.ceil(self.epochs * n_private / self.batch_size)

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        yield from _at_least(self, ("batch_size", "max_physical_batch", "eval_batch_size"), 1)
        yield from _at_least(self, ("throughput_steps", "augmult"), 1)
        yield from _at_least(self, ("warmup_steps", "crop_padding", "throughput_warmup_steps"), 0)
        if (self.steps is None) == (self.epochs is None):
            which = "both are set" if self.steps is not None else "neither is set"
            yield (
                "steps",
                f"exactly one of steps and epochs must be set, {which}",
                ("steps: <int> or epochs: <number>"),
            )
        if self.steps is not None and self.steps < 1:
            yield "steps", "must be positive", "an integer >= 1"
        if self.epochs is not None and self.epochs <= 0:
            yield "epochs", "must be positive", "a number > 0"
        if self.lr <= 0:
            yield "lr", "must be positive", "a number > 0"
        if not 0 <= self.momentum < 1:
            yield "momentum", "must be in [0, 1)", "0 <= momentum < 1"
        if self.nesterov and (self.momentum == 0 or self.optimizer != "sgd"):
            yield "nesterov", "needs optimizer sgd with momentum > 0", "false, or momentum > 0"
        if self.weight_decay < 0:
            yield "weight_decay", "must not be negative", "a number >= 0"
        if self.lr_schedule == "step" and not self.lr_milestones:
            yield "lr_milestones", "lr_schedule 'step' needs milestones", "fractions in (0, 1)"
        if self.lr_milestones and self.lr_schedule != "step":
            yield "lr_milestones", "are only used by lr_schedule 'step'", "[] or lr_schedule: step"
        ms = self.lr_milestones
        if any(not 0 < m < 1 for m in ms) or any(a >= b for a, b in itertools.pairwise(ms)):
            yield "lr_milestones", "must be increasing fractions of the run", "fractions in (0, 1)"
        if self.lr_gamma <= 0:
            yield "lr_gamma", "must be positive", "a number > 0"
        if self.augmult > 1 and not self.augment:
            yield (
                "augmult",
                "views of an example are identical without augment",
                ("1 when augment is false"),
            )
        if self.ema is not None and not 0 < self.ema < 1:
            yield "ema", "must be in (0, 1)", "a decay in (0, 1), or null"
        if self.max_loss <= 0:
            yield "max_loss", "must be positive", "a number > 0"
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            yield "checkpoint_every", "must be positive", "an integer >= 1, or null"


@dataclass(frozen=True)
class ReportConfig:
    """How the leaderboard compares the norms.

    Attributes:
        baseline: Norm spec every other norm is compared with.
        alpha: Family-wise significance level (Holm-corrected), in (0, 0.5).
        primary: The grid point of the primary comparison family, as ``key=value`` pairs of
            swept grid keys joined by ``,`` (``training.steps=120``): every norm against the
            baseline there is the one family the suite's claims rest on; every other family
            is exploratory. None: the last value the grid lists of each swept key (the final
            budget or target; for ``privacy.simulate_batch_size``, null, the private run); a
            grid that sweeps nothing has one point.
        collapse_pp: An ok run whose test accuracy is within this many percentage points of
            chance (1 / classes) is flagged collapsed and counted as a failure, at chance.
        rope_pp: Half-width, in percentage points, of the region of practical equivalence of
            the graded evidence (posterior mass beyond it, TOST within it).
    """

    baseline: str = DEFAULT_NORM
    alpha: float = 0.05
    primary: str | None = None
    collapse_pp: float = 2.0
    rope_pp: float = 1.0

    def problems(self) -> Iterator[Problem]:
        """Impossible values, as ``(field, message, allowed)``; types are checked by the loader."""
        problem = alpha_problem(self.alpha)
        if problem is not None:
            yield "alpha", problem, "0 < alpha < 0.5"
        if self.primary is not None and primary_problem(self.primary) is not None:
            yield "primary", str(primary_problem(self.primary)), PRIMARY_FORM
        if not 0 <= self.collapse_pp < 50:
            yield "collapse_pp", "must be in [0, 50)", "percentage points, 0 <= x < 50"
        if not 0 < self.rope_pp < 100:
            yield "rope_pp", "must be in (0, 100)", "percentage points, 0 < x < 100"


#: The config dataclass of each suite section.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "privacy": PrivacyConfig,
    "training": TrainingConfig,
    "report": ReportConfig,
}
#: Sections a grid key may sweep (the report does not change a run).
GRID_SECTIONS = ("data", "privacy", "training")


def _at_least(config: Any, names: Sequence[str], low: int) -> Iterator[Problem]:
    for name in names:
        if getattr(config, name) < low:
            yield name, f"must be at least {low}", f"an integer >= {low}"
