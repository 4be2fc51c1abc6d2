"""The measured fields of a run's record, one builder per section, in the record's field order."""

from __future__ import annotations

import time
from typing import Any

from bench.measure import process_peak_rss
from bench.privacy import History, epsilon_spent
from bench.privacy_tuning import METHOD, composed, epsilon_with_tuning
from bench.seeds import STREAM_SCHEME
from bench.train import data_cache
from bench.train.loop import Trained
from bench.train.paths import grad_sample_paths, grad_sampler
from bench.train.reference import NonPrivateMeasure
from bench.train.setup import Run


def identity_fields(run: Run) -> dict[str, Any]:
    """The status, the resolved norm, the data's sizes and checksum, the stage."""
    cell, data = run.cell, run.data
    scored_on = data.eval_split
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
        "dataset_sha256": data_cache.cached_checksum(cell.data),
        "image_shape": list(data.train_x.shape[1:]),
        "augment_flip": bool(cell.training.augment and data.flip),
    }


def score_fields(run: Run, accuracy: float, eval_weights: str, loss: float) -> dict[str, Any]:
    """The accuracy on the split scored, whether the run is DP, the non-private diagnostics."""
    cell, plan = run.cell, run.plan
    scored_on = run.data.eval_split
    log_loss = cell.training.log_private_loss
    return {
        "test_acc": accuracy if scored_on == "test" else None,
        "val_acc": accuracy if scored_on == "val" else None,
        "val_score_noise": cell.score_noise if scored_on == "val" else None,
        "dp_valid": plan.dp_valid,
        "simulated": None
        if plan.dp_valid
        else {
            "epsilon": cell.privacy.epsilon,
            "delta": cell.privacy.delta,
            "batch_size": cell.training.batch_size,
            "reference_noise_multiplier": plan.calibration.noise_multiplier,
            "simulated_batch_size": plan.batch_size,
        },
        "eval_weights": eval_weights,
        "final_train_loss": loss if log_loss else None,
        "nonprivate_diagnostics": (["final_train_loss"] if log_loss else [])
        + (["diverged"] if cell.training.divergence_check == "private_loss" else []),
    }


def throughput_fields(trained: Trained, nonprivate: NonPrivateMeasure | None) -> dict[str, Any]:
    """DP and non-private images/s with their errors and timed steps, and their ratio."""
    timer = trained.timer
    dp_tput = timer.throughput
    np_tput = nonprivate.throughput if nonprivate is not None else None
    return {
        "throughput_img_s": dp_tput,
        "throughput_rel_se": timer.relative_se,
        "nonprivate_throughput_img_s": np_tput,
        "nonprivate_throughput_rel_se": nonprivate.relative_se if nonprivate else None,
        "nonprivate_timed_steps": nonprivate.timed_steps if nonprivate else None,
        "dp_nonprivate_throughput_ratio": (dp_tput / np_tput) if dp_tput and np_tput else None,
        "throughput_timed_steps": timer.steps,
    }


def memory_fields(
    run: Run, trained: Trained, nonprivate: NonPrivateMeasure | None, device_name: str
) -> dict[str, Any]:
    """DP and non-private peak memory, what each figure measures, and the device."""
    on_cuda, training = run.device.type == "cuda", run.cell.training
    return {
        "peak_mem_bytes": trained.peak_bytes,
        "peak_mem_abs_bytes": trained.peak_abs_bytes,
        "nonprivate_peak_mem_bytes": nonprivate.peak_bytes if nonprivate else None,
        "nonprivate_peak_mem_abs_bytes": nonprivate.peak_abs_bytes if nonprivate else None,
        "peak_rss_bytes": process_peak_rss(),
        "memory_measure": (
            "torch.cuda.max_memory_allocated over the training steps, minus what was allocated "
            "before the first (data, model, EMA); *_abs_bytes: the whole peak"
            if on_cuda
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
        "device": device_name,
    }


def privacy_fields(run: Run) -> dict[str, Any]:
    """Epsilon spent by the steps taken and the charges made (`bench.privacy.epsilon_spent`),
    the privacy plan the noise was calibrated on, and, for a final run of a tuned suite, the
    whole procedure's epsilon (`bench.privacy_tuning`)."""
    cell, plan, history = run.cell, run.plan, run.accountant.history
    spent = epsilon_spent(plan.calibration, history, cell.privacy.delta)
    taken = [*plan.calibration.extra, *history]
    return {
        "epsilon_spent": spent.epsilon,
        "epsilon_spent_by_accountant": spent.by_accountant,
        "accountant": spent.accountant,
        "accountant_requested": cell.privacy.accountant,
        "accountant_note": spent.note,
        "steps_done": sum(n for _s, _q, n in history),
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": plan.sample_rate,
        "steps": plan.steps,
        "privacy_charges": [c.as_record() for c in plan.charges],
        "secure_noise": cell.privacy.secure_noise,
        "stream_scheme": STREAM_SCHEME,
        **with_tuning_fields(cell.tuning_history, taken, cell.privacy.delta, spent.accountant),
    }


def with_tuning_fields(
    tuning: History | None, taken: History, delta: float, accountant: str
) -> dict[str, Any]:
    """For a final run of a tuned suite (``tuning``: its grid point's tuning history), the
    whole procedure's epsilon (`bench.privacy_tuning`), its accountant, method and the history
    composed; null otherwise (an untuned suite's run, a tuning run)."""
    if tuning is None:
        return {
            "epsilon_with_tuning": None,
            "epsilon_with_tuning_accountant": None,
            "epsilon_with_tuning_method": None,
            "epsilon_with_tuning_history": None,
        }
    result = epsilon_with_tuning(tuning, taken, delta, accountant)
    return {
        "epsilon_with_tuning": result.epsilon,
        "epsilon_with_tuning_accountant": result.accountant,
        "epsilon_with_tuning_method": METHOD,
        "epsilon_with_tuning_history": [list(e) for e in composed([tuning, taken])],
    }


def clipping_fields(run: Run) -> dict[str, Any]:
    """How per-example gradients were clipped, layer by layer, and where randomness came from.

    Reads the DP model and its step: call it before `Run.release`.
    """
    training, norm = run.cell.training, run.norm
    clipper = getattr(run.dp_step, "clipper", None)
    return {
        "augmult": training.augmult,
        "grad_sample_mode": training.grad_sample_mode,
        "grad_sampler": grad_sampler(training.grad_sample_mode),
        "norm_grad_sampler": norm.spec.grad_sampler,
        "norm_dp_status": norm.dp_status,
        "norm_dp_note": norm.dp_note,
        "grad_sample_paths": grad_sample_paths(run.model, training.grad_sample_mode),
        "bk_fallback_classes": clipper.fallback_classes if clipper is not None else [],
        "bk_unreached_layers": clipper.unreached_layers if clipper is not None else [],
        "random_streams": (
            "named: sha256(seed, purpose) per source (bench.seeds); dropout per physical "
            "batch, sha256(seed, dropout/step/batch)"
            + (
                "; sampling, noise and norm streams from os.urandom"
                if run.cell.privacy.secure_noise
                else "; sampling, noise and norm streams sha256(seed, purpose, run key)"
            )
        ),
    }


def outcome_fields(
    sparsity: dict[str, Any] | None,
    trained: Trained,
    model_path: str | None,
    train_s: float,
    started: float,
    prov: dict[str, Any],
) -> dict[str, Any]:
    """Sparsity, resume, saved model, wall times (the whole run's up to now) and provenance."""
    return {
        "sparsity": sparsity,
        "resumed_from_step": trained.resumed_from,
        "model_path": model_path,
        "train_wall_s": train_s,
        "wall_s": time.perf_counter() - started,
        "provenance": prov,
    }


def rank_fields(
    per_rank: list[tuple[float | None, int | None, int | None]], shares: list[float | None]
) -> dict[str, Any]:
    """The processes the cell ran on (``world_size``) and, on more than one, the total DP
    throughput (the ranks step together, so their images/s add up), each rank's, the largest
    device peak, and each rank's share of its timed steps spent in the all-reduce; on one
    process the single-process fields stand as they are."""
    if len(per_rank) == 1:
        return {"world_size": 1}
    tputs = [t for t, _, _ in per_rank]
    peaks = [p for _, p, _ in per_rank]
    abs_peaks = [a for _, _, a in per_rank]
    return {
        "world_size": len(per_rank),
        "throughput_img_s": sum(tputs) if all(t is not None for t in tputs) else None,
        "throughput_per_rank_img_s": tputs,
        "peak_mem_bytes": max((p for p in peaks if p is not None), default=None),
        "peak_mem_abs_bytes": max((a for a in abs_peaks if a is not None), default=None),
        "peak_mem_per_rank_bytes": peaks,
        "allreduce_share_per_rank": shares,
    }
