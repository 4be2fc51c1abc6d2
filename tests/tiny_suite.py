"""The tiny suite the runner tests train (a few seconds of DP-SGD) and the repository root."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
description: a few seconds of DP-SGD on generated data
data: {source: synthetic, num_train: 256, num_test: 64, image_size: 16, public_split: 32}
privacy: {epsilon: 8.0, delta: 1.0e-3, accountant: rdp}
training:
  batch_size: 64
  max_physical_batch: 32
  steps: 3
  lr: 1.0
  crop_padding: 2
  eval_batch_size: 64
  throughput_warmup_steps: 1
  throughput_steps: 1
grid:
  backbone: ["resnet9[width=0.125]"]
  norm: [group_norm, layer_norm]
  seed: [0, 1, 2]
"""


def tiny_tune(
    *,
    name: str = "tiny_tune",
    score_noise: float | None = None,
    norms: str = "group_norm, layer_norm",
    seeds: str = "0, 1",
    refine: bool = False,
    tune_seeds: str = "0",
) -> str:
    """A tiny tuned suite (two learning rates, one tuning seed, 2-step tuning runs, no
    refinement unless asked) with a validation split; ``score_noise`` None leaves the tune
    section's default."""
    noise = "" if score_noise is None else f"\n  score_noise: {score_noise}"
    noise += "" if refine else "\n  refine: false"
    return f"""\
name: {name}
data: {{source: synthetic, num_train: 320, num_test: 64, image_size: 16, val_split: 64}}
privacy: {{epsilon: 8.0, delta: 1.0e-3, accountant: rdp}}
training:
  batch_size: 64
  max_physical_batch: 64
  steps: 3
  lr: 1.0
  crop_padding: 2
  eval_batch_size: 64
  throughput_warmup_steps: 1
  throughput_steps: 1
  measure_nonprivate: false
tune:
  keys: {{training.lr: [0.5, 2.0]}}
  seeds: [{tune_seeds}]
  overrides: {{training.steps: 2}}{noise}
grid:
  backbone: ["resnet9[width=0.125]"]
  norm: [{norms}]
  seed: [{seeds}]
"""
