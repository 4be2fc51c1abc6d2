"""Test-set uncertainty (issue 27, item 5): final runs store their per-example test predictions
beside the records, and the primary comparisons get an interval that resamples test examples
jointly with seeds."""

from __future__ import annotations

import json
import math

import numpy as np

from bench.predictions import correct, write
from bench.results.leaderboard import write_report
from bench.results.stats import compare
from bench.results.stats.descriptive import t_quantile
from bench.results.stats.testset import joint_interval
from bench.suite import load_suite
from bench.sweep.options import RunOptions
from bench.sweep.run import run_suite


def test_the_joint_interval_adds_the_test_sets_sampling_error_to_the_seeds():
    """Seeds that agree exactly give a seeds-only interval of zero width; the test examples
    give the width their own error implies: t(seeds - 1) times the standard error of the mean
    per-example difference."""
    rng = np.random.default_rng(1)
    n = 4000
    base = rng.random(n) < 0.5
    better = base | (rng.random(n) < 0.1)  # right wherever the baseline is, and more
    ours = {s: better.astype(float) for s in range(5)}
    theirs = {s: base.astype(float) for s in range(5)}
    joint = joint_interval(ours, theirs)
    diff = better.astype(float) - base.astype(float)
    se = diff.std(ddof=1) / math.sqrt(n)
    assert math.isclose(joint.mean, diff.mean())
    assert joint.low < joint.mean < joint.high
    assert math.isclose((joint.high - joint.low) / 2, t_quantile(0.95, 4) * se)
    # Seeds that disagree widen it further; one shared seed gives nothing to resample.
    ours[0] = base.astype(float)
    wider = joint_interval(ours, theirs)
    assert wider.high - wider.low > joint.high - joint.low
    assert joint_interval({0: ours[0]}, {0: theirs[0]}) is None


def test_the_joint_interval_is_never_narrower_than_the_seeds_only_interval():
    """Adding the test set's sampling error cannot shrink an interval. With 2 or 3 seeds whose
    differences disagree, a percentile bootstrap over seeds spans little more than the seeds'
    own range (a 2-seed paired t-interval is 12.7 standard errors wide a side); the joint
    interval must contain the paired t-interval of the same per-seed differences."""
    rng = np.random.default_rng(2)
    n = 2000
    base = (rng.random(n) < 0.5).astype(float)
    for gains in ([0.02, 0.10], [0.00, 0.04, 0.09]):
        ours = {s: np.maximum(base, rng.random(n) < g) for s, g in enumerate(gains)}
        theirs = {s: base for s in range(len(gains))}
        joint = joint_interval(ours, theirs)
        seeds_only = compare(
            {s: a.mean() for s, a in ours.items()}, {s: b.mean() for s, b in theirs.items()}
        )
        assert math.isclose(joint.mean, seeds_only.diff)
        assert joint.low <= seeds_only.diff - seeds_only.half_width
        assert joint.high >= seeds_only.diff + seeds_only.half_width


def test_predictions_are_checked_against_their_record(tmp_path):
    field = write(tmp_path / "predictions", "abc", np.array([1, 2, 3]), np.array([1, 0, 3]), 10)
    assert field["path"] == "predictions/abc.u8" and field["n"] == 3
    assert correct(tmp_path, field).tolist() == [True, False, True]
    # A thousand classes do not fit a byte: two bytes per example.
    wide = write(tmp_path / "predictions", "wide", np.array([999]), np.array([999]), 1000)
    assert wide["path"].endswith(".u16") and correct(tmp_path, wide).tolist() == [True]
    (tmp_path / field["path"]).write_bytes(bytes([1, 2, 4]))
    assert "SHA-256 differs" in correct(tmp_path, field)


SUITE = """\
name: tiny_preds
data: {source: synthetic, num_train: 256, num_test: 64, image_size: 16}
privacy: {epsilon: 8.0, delta: 1.0e-3, accountant: rdp}
training: {batch_size: 64, max_physical_batch: 64, steps: 2, lr: 1.0, eval_batch_size: 64,
           throughput_warmup_steps: 1, throughput_steps: 1, measure_nonprivate: false}
grid:
  backbone: ["resnet9[width=0.125]"]
  norm: [group_norm, layer_norm]
  seed: [0, 1]
"""


def test_a_sweep_writes_predictions_and_the_leaderboard_resamples_them(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    out = tmp_path / "out"
    run_suite(load_suite(path), RunOptions(out_dir=out, progress=False))
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for record in records:
        right = correct(out, record["predictions"])
        assert len(right) == 64 and math.isclose(right.mean(), record["test_acc"])
    board = (out / "leaderboard.md").read_text()
    assert "**Test-set uncertainty**" in board
    assert "Δ, 95% CI (seeds × test examples)" in board
    # A predictions file changed after the run: the report says so instead of using it.
    changed = out / records[0]["predictions"]["path"]
    changed.write_bytes(bytes(b ^ 1 for b in changed.read_bytes()))
    write_report(out)
    assert "SHA-256 differs from the record's" in (out / "leaderboard.md").read_text()
