"""Train one grid cell with DP-SGD and return its measured record fields: the orchestrator."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench import predictions, saved_model
from bench.config import Cell
from bench.provenance import record_provenance
from bench.train.evaluate import predict
from bench.train.loop import Progress, Trained, train_loop
from bench.train.ranks import SINGLE, Ranks
from bench.train.record import (
    clipping_fields,
    identity_fields,
    memory_fields,
    outcome_fields,
    privacy_fields,
    rank_fields,
    score_fields,
    throughput_fields,
)
from bench.train.reference import NonPrivateMeasure, nonprivate_throughput
from bench.train.score import noisy_score
from bench.train.setup import Run, setup_run


def train_cell(
    cell: Cell,
    device: torch.device,
    *,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    model_dir: Path | None = None,
    predictions_dir: Path | None = None,
    ranks: Ranks = SINGLE,
) -> dict[str, Any] | None:
    """Train one cell with DP-SGD and return its measured record fields (status ``ok``).

    The cell's identity (run key, backbone, norm, seed, targets, config) is the runner's part
    of the record (`bench.sweep.cell.run_cell`), written the same way whatever the outcome. Every
    random source draws from its own named stream of the cell's seed (`bench.seeds`); the secret
    ones (noise, sampling, a norm's DP statistics) from the cell's own, keyed by its run key,
    or under ``privacy.secure_noise`` from the operating system's entropy.

    What leaves the run is DP or public: the test accuracy, a tuning run's validation score
    as a noisy count (`bench.train.score`), the noise and privacy figures, timings and memory;
    the un-noised loss of private batches only with ``training.log_private_loss`` (in the
    record and on the progress bar), and a divergence stop that read it only with
    ``training.divergence_check: private_loss``, each listed in
    ``nonprivate_diagnostics``.

    Args:
        checkpoint_dir: Where the run's checkpoints live (``<dir>/<run_key>/``): it resumes
            from a valid one and writes them every ``training.checkpoint_every`` steps. The
            caller deletes the checkpoint once the record is written
            (`bench.checkpoint.remove`). None: no checkpoints.
        model_dir: Where ``training.save_model`` writes the final and the EMA weights
            (`bench.saved_model`).
        predictions_dir: Where a final run writes its per-example test predictions
            (`bench.predictions`); None: not written (the record's ``predictions`` is null).
        ranks: The processes this cell runs on (`bench.train.ranks`): each trains on its
            share of every logical batch; rank 0 scores the model and returns the record
            fields, the others return None. The non-private reference is measured on one
            process only.

    Raises:
        Diverged: The run diverged as ``training.divergence_check`` defines it.
        ConfigError: The cell cannot run as configured.
    """
    run = setup_run(cell, device, ranks)
    trained = train_loop(run, progress, checkpoint_dir)
    timer = trained.timer
    reduce_share = ranks.reduce_s[0] / timer.seconds if timer.seconds else None
    per_rank = ranks.gather((timer.throughput, trained.peak_bytes, trained.peak_abs_bytes))
    shares = ranks.gather(reduce_share)
    if not ranks.writer:
        return None
    train_s = time.perf_counter() - run.started
    privacy = privacy_fields(run)
    accuracy, eval_weights, model_path, written = _score(run, model_dir, predictions_dir)
    clipping = clipping_fields(run)
    sparsity = run.sparsity.summary()
    run.release()
    nonprivate = _nonprivate(run, trained)
    prov = record_provenance(device)  # runs git twice: once per cell
    return {
        **identity_fields(run),
        **score_fields(run, accuracy, eval_weights, trained.loss),
        **throughput_fields(trained, nonprivate),
        **memory_fields(run, trained, nonprivate, prov["device_name"]),
        **privacy,
        **clipping,
        **outcome_fields(sparsity, trained, model_path, train_s, run.started, prov),
        **rank_fields(per_rank, shares),
        "predictions": written,
    }


def _score(
    run: Run, model_dir: Path | None, predictions_dir: Path | None
) -> tuple[float, str, str | None, dict[str, Any] | None]:
    """``(accuracy, weights scored, saved model path, predictions field)``: the EMA's weights
    when there is one, else the final ones, scored on the run's split and saved when
    ``training.save_model``. On the validation split (a tuning run, whose examples are
    private) the accuracy is the noisy count's (`noisy_score`) and no prediction leaves the
    run; on the test set, which is not private, the exact one, and the per-example
    predictions are written to ``predictions_dir``."""
    training = run.cell.training
    eval_model = run.ema.module if run.ema is not None else run.model
    eval_weights = "ema" if run.ema is not None else "final"
    predicted = predict(eval_model, run.data, training.eval_batch_size, training.precision)
    correct = int((predicted == run.data.test_y).sum())
    n = int(run.data.test_x.shape[0])
    accuracy = noisy_score(correct, n, run.cell) if run.data.eval_split == "val" else correct / n
    written = None
    # The test set is public: its predictions may leave the run; the validation split's may not.
    if run.data.eval_split != "val" and predictions_dir is not None:
        written = predictions.write(
            Path(predictions_dir),
            run.cell.run_key,
            predicted.cpu().numpy(),
            run.data.test_y.cpu().numpy(),
            run.plan.num_classes,
        )
    model_path = None
    if training.save_model and model_dir is not None:
        ema = run.ema.module if run.ema is not None else None
        path = saved_model.save(model_dir, run.cell.run_key, run.model, ema, eval_weights)
        # Relative to the folder above ``model_dir``: the records'.
        model_path = str(path.relative_to(Path(model_dir).parent))
    return accuracy, eval_weights, model_path, written


def _nonprivate(run: Run, trained: Trained) -> NonPrivateMeasure | None:
    """The non-private reference on the untrained copy, timed to the DP side's precision;
    None when ``training.measure_nonprivate`` is off. Call it after `Run.release`."""
    initial, run.initial = run.initial, None
    if initial is None or run.ranks.distributed:
        return None
    return nonprivate_throughput(
        initial,
        run.data,
        run.cell.training,
        run.cell.seed,
        steps=run.plan.steps,
        match_relative_se=trained.timer.relative_se,
        max_timed_steps=trained.timer.steps,
        on_step=lambda model, step: run.norm.on_step(model, run.run_data, step),
    )
