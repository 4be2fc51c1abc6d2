"""The run record's schema: every field a record may hold, and what makes a parsed one usable."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypedDict

#: The values ``status`` may take.
STATUSES = ("ok", "failed", "skipped", "interrupted")
#: Statuses a plain re-run of the suite does not run again: the cell itself decided them.
FINAL_STATUSES = ("ok", "failed", "skipped")

#: Fields without which a line is not a usable record.
REQUIRED_FIELDS = ("run_key", "status")


class Provenance(TypedDict, total=False):
    """Where and with what a run was measured (``bench.provenance.record_provenance``)."""

    git_commit: str | None  # commit hash, "-dirty" when the work tree had uncommitted changes
    torch: str  # torch.__version__
    torchvision: str | None  # installed version, None when not installed
    opacus: str | None  # installed version, None when not installed
    timm: str | None  # installed version, None when not installed
    numpy: str | None  # installed version
    scipy: str | None  # installed version
    pillow: str | None  # installed version
    cuda: str | None  # torch.version.cuda: the CUDA torch was built with (None: CPU build)
    cudnn: str | None  # cuDNN version where a GPU is present, else None
    python: str  # interpreter version, e.g. "3.11.9"
    device_name: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu (2 threads)"
    hostname: str  # machine the run ran on
    platform: str  # platform.platform(): OS and kernel build
    slurm_job_id: str | None  # $SLURM_JOB_ID, None outside Slurm


class PrivacyCharge(TypedDict, total=False):
    """One privacy cost of a run besides the DP-SGD steps (e.g. DP normalisation statistics)."""

    description: str  # what is charged, in words
    noise_multiplier: float  # sigma of its Gaussian mechanism, in units of its sensitivity
    sample_rate: float  # its sampling probability per release, in [0, 1]
    steps: int  # how many times it is released


class Record(TypedDict, total=False):
    """One line of ``records.jsonl``: one run, whatever its outcome.

    Every record holds the cell's identity (``bench.sweep.cell``), ``status`` and ``error``; the
    measurements (``bench.train.cell.train_cell``) are present only when ``status`` is ``ok``,
    and a failed record adds ``provenance``, ``device`` and ``wall_s``. A field in
    :data:`NUMERIC_FIELDS` is a finite number or null (nan/inf are written as null). Names that
    tools outside the project may rely on are listed in ARCHITECTURE.md ("Records"): add fields
    freely, rename none.
    """

    # Identity of the run, written whatever the outcome.
    run_key: str  # hash of the resolved cell config; unique per run, the resume key
    suite: str  # suite name
    backbone: str  # backbone spec string, e.g. "resnet9"
    norm: str  # full norm spec string, e.g. "group_norm[num_groups=8]"
    seed: int  # the run's seed (identifier, not a quantity)
    overrides: dict[str, Any]  # swept grid keys beyond backbone/norm/seed: key path -> value
    dataset: str  # dataset display name
    config: dict[str, Any]  # the resolved cell (bench.config.cell_to_dict)
    epsilon_target: float  # target epsilon of the (epsilon, delta) budget
    delta: float  # target delta
    max_grad_norm: float  # per-example clipping bound C (L2 norm of a gradient)

    # Outcome.
    status: str  # one of STATUSES: "ok", "failed", "skipped", or "interrupted" (infrastructure)
    error: str | None  # why the run failed or was skipped; None when ok
    diverged: bool  # failed: stopped by training.divergence_check (see divergence_check)
    divergence_check: str  # "parameters" (non-finite after an update: reads only released
    # values) or "private_loss" (also the un-noised loss: listed in nonprivate_diagnostics)
    traceback: str  # last frames of the traceback of an unexpected exception (failed only)

    # What was trained.
    norm_name: str  # registry name of the norm, without parameters
    norm_params: dict[str, Any]  # the norm's parameters as resolved
    n_private: int  # N, private training examples (count)
    n_test: int  # test examples evaluated (count)
    num_classes: int  # classes of the data (chance accuracy is 1 / num_classes)
    dataset_sha256: str  # SHA-256 of the decoded arrays the run read (bench.data.dataset_checksum)
    image_shape: list[int]  # [channels, height, width] of the inputs, padding included (pixels)
    augment_flip: bool  # random horizontal flips were valid for the data and used (not digits)
    augmult: int  # augmentation multiplicity K, views per example per step
    grad_sample_mode: str  # per-sample clipping path: "bk", "hooks" or "functorch"
    grad_sampler: str  # what clipped the per-example gradients: "bk" or "opacus"
    norm_grad_sampler: str  # the norm's registered per-sample-gradient provider under Opacus
    norm_dp_status: str  # "per-sample", "public data", "budget-charged" (ResolvedNorm.dp_status)
    norm_dp_note: str  # what the norm reads across examples and what it costs, in words
    grad_sample_paths: dict[str, str]  # trainable layer type -> path its per-sample grads took
    stage: str  # "final" (test set) or "tune" (validation split held out and scored)
    tuned: dict[str, Any]  # tuning values the run ran at: a candidate (tune) or the selection
    val_acc: float | None  # noisy correct count over n_val (tune stage), a fraction in [0, 1]
    val_score_noise: float | None  # std of the noise on val_acc's correct count, in examples
    n_val: int | None  # validation examples scored (tune stage)
    dp_valid: bool  # False for a TAN simulation: not private at the target
    simulated: dict[str, Any] | None  # TAN: the simulated target, batch and reference sigma
    sparsity: dict[str, Any] | None  # pre-pruning / gradient dropping: rates, reads, coordinates
    resumed_from_step: int | None  # step of the checkpoint the run resumed from, None if none
    model_path: str | None  # saved weights relative to the output folder (training.save_model)
    predictions: dict[str, Any] | None  # final runs: per-example test predictions beside the
    # records (bench.predictions: path, sha256, labels, labels_sha256, n, dtype); None: none
    bk_fallback_classes: list[str]  # layer classes the book-keeping clipper materialised via Opacus
    bk_unreached_layers: list[str]  # trainable layers no backward pass reached (noise only)
    random_streams: str  # how the run's random streams derive from its seed (bench.seeds)

    # Accuracy.
    test_acc: float | None  # top-1 accuracy on the whole test set, a fraction in [0, 1]
    eval_weights: str  # weights evaluated: "ema" or "final"
    final_train_loss: float | None  # un-noised loss of the last private batch; null unless logged
    nonprivate_diagnostics: list[str]  # fields holding non-DP values (log_private_loss, or
    # "diverged" under divergence_check: private_loss)

    # Speed and memory.
    throughput_img_s: float | None  # DP training images/s, views included, warm-up excluded
    nonprivate_throughput_img_s: float | None  # same model's non-private images per second
    dp_nonprivate_throughput_ratio: float | None  # throughput_img_s / nonprivate_throughput_img_s
    throughput_timed_steps: int  # DP steps the throughput is measured over (count)
    throughput_rel_se: float | None  # relative standard error of throughput_img_s (fraction)
    nonprivate_throughput_rel_se: float | None  # the same for nonprivate_throughput_img_s
    nonprivate_timed_steps: int | None  # non-private steps timed (count)
    nonprivate_measure: str  # what the non-private step holds and when it ran, in words
    peak_mem_bytes: int | None  # DP steps' own device peak above data+model+EMA, bytes; None on CPU
    peak_mem_abs_bytes: int | None  # whole device peak during the DP steps, bytes; None on CPU
    nonprivate_peak_mem_bytes: int | None  # non-private steps' own peak above data+model, bytes
    nonprivate_peak_mem_abs_bytes: int | None  # whole device peak, non-private steps, bytes
    peak_rss_bytes: int  # peak resident set of the process so far, bytes (an upper bound)
    memory_measure: str  # how peak_mem_bytes was measured, in words
    device: str  # device the run was measured on (provenance device_name)
    world_size: int  # processes the run's steps ran on (bench.train.ranks); absent before: 1
    throughput_per_rank_img_s: list[float | None]  # each process's DP images/s (world_size > 1)
    peak_mem_per_rank_bytes: list[int | None]  # each process's DP device peak (world_size > 1)
    allreduce_share_per_rank: list[float | None]  # fraction of timed step time in the all-reduce

    # Privacy.
    accountant: str  # the one accountant the noise was calibrated and epsilon reported with
    accountant_requested: str  # the suite's privacy.accountant ("prv" or "rdp")
    accountant_note: str  # why accountant differs from accountant_requested, else ""
    secure_noise: bool  # secret streams from os.urandom (privacy.secure_noise), not the seed
    stream_scheme: str  # how secret streams derive (bench.seeds); absent: by (seed, purpose)
    epsilon_spent: float | None  # epsilon spent by the whole run under `accountant`
    epsilon_spent_by_accountant: dict[str, float | None]  # accountant -> epsilon spent
    noise_multiplier: float | None  # DP-SGD sigma, noise std in units of max_grad_norm
    sample_rate: float  # Poisson sampling rate q = B / N, in (0, 1]
    steps: int  # DP-SGD steps planned (count)
    steps_done: int  # DP-SGD steps the optimiser took, as the accountant saw them (count)
    privacy_charges: list[PrivacyCharge]  # other privacy costs composed into epsilon_spent
    epsilon_with_tuning: float | None  # whole tuned procedure's epsilon (final runs); else null
    epsilon_with_tuning_accountant: str | None  # accountant of epsilon_with_tuning
    epsilon_with_tuning_method: str | None  # how it is composed: "composition"
    epsilon_with_tuning_history: list[list[float]] | None  # [sigma, q, steps] entries composed
    epsilon_with_tuning_revisions: list[dict]  # earlier figures (bench.sweep.restate); absent: none

    # Time and provenance.
    train_wall_s: float  # seconds from the start of the run to the end of training
    wall_s: float  # seconds the whole run took, evaluation and measurements included
    provenance: Provenance  # versions, commit and hardware


#: The fields that must be finite numbers or null (bools are not numbers here).
NUMERIC_FIELDS = (
    "epsilon_target",
    "delta",
    "max_grad_norm",
    "n_private",
    "n_test",
    "augmult",
    "test_acc",
    "final_train_loss",
    "throughput_img_s",
    "nonprivate_throughput_img_s",
    "dp_nonprivate_throughput_ratio",
    "throughput_timed_steps",
    "peak_mem_bytes",
    "peak_mem_abs_bytes",
    "nonprivate_peak_mem_bytes",
    "nonprivate_peak_mem_abs_bytes",
    "throughput_rel_se",
    "nonprivate_throughput_rel_se",
    "nonprivate_timed_steps",
    "num_classes",
    "peak_rss_bytes",
    "epsilon_spent",
    "epsilon_with_tuning",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "steps_done",
    "train_wall_s",
    "wall_s",
)


def _is_finite_number(value: object) -> bool:
    # bool is an int subclass; a true/false accuracy is a bug upstream, not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def check_record(record: object) -> str | None:
    """Why a parsed line of a records file is not a usable record, or None when it is.

    A usable record is a JSON object with a non-empty string ``run_key``, a ``status`` in
    :data:`STATUSES`, and a finite number or null in each of :data:`NUMERIC_FIELDS` it holds
    (json reads ``NaN`` and ``Infinity``, which this project never writes). Other fields are not
    checked: tools may add their own.

    Args:
        record: The parsed JSON value of one line.

    Returns:
        One message saying what is wrong, or None.
    """
    if not isinstance(record, dict):
        return f"not a JSON object (got {type(record).__name__})"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return f"missing required field(s): {', '.join(missing)}"
    if not isinstance(record["run_key"], str) or not record["run_key"]:
        return f"run_key must be a non-empty string (got {record['run_key']!r})"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    bad = [
        f"{name} must be a finite number or null (got {record[name]!r})"
        for name in NUMERIC_FIELDS
        if record.get(name) is not None and not _is_finite_number(record[name])
    ]
    return "; ".join(bad) or None


def grid_value_text(value: object) -> str:
    """A swept grid value as table titles show it: ``none`` for null, a nested option such as
    ``training.pre_prune: {rate: 0.5, method: random}`` as ``random:0.5`` (what
    `bench.plan.cell_label` prints for the same cell), anything else as ``str``."""
    if value is None:
        return "none"
    if isinstance(value, Mapping):
        # A random choice reads no public data: its public-data settings are not shown.
        unread = ("refresh", "public_examples") if value.get("method") == "random" else ()
        rest = {k: v for k, v in value.items() if k not in ("method", "rate", *unread)}
        head = (
            f"{value['method']}:{value['rate']:g}"
            if {"method", "rate"} <= set(value) and isinstance(value["rate"], (int, float))
            else ""
        )
        tail = ",".join(f"{k}={grid_value_text(v)}" for k, v in sorted(rest.items()))
        return ",".join(filter(None, [head, tail]))
    return str(value)
