"""The tuned procedure's privacy: noisy validation scores, and epsilon_with_tuning against an
independent computation (issue 26, item 1)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from scipy.optimize import brentq
from scipy.stats import norm as gaussian

import bench.train.cell
from bench.errors import ConfigError
from bench.privacy_tuning import composed, epsilon_with_tuning
from bench.results.leaderboard.write import render_leaderboard
from bench.results.records import read_records
from bench.suite import load_suite
from bench.sweep.options import RunOptions
from bench.sweep.protocol import tune_cells
from bench.sweep.run import run_suite
from bench.train.score import score_generator
from tests.report_records import make_record
from tests.tiny_suite import tiny_tune

#: RDP orders for the direct computation (Opacus' defaults are not read: a different path).
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 128))

SUITE = tiny_tune(name="tiny_tuned", score_noise=3.0, norms="group_norm", seeds="0")


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tuned.yaml"
    path.write_text(SUITE)
    return path


def direct_rdp_epsilon(entries, delta: float) -> float:
    """Epsilon of a list of (sigma, q, steps) mechanisms by summing their RDP curves one by one:
    the closed form alpha * steps / (2 sigma^2) for a Gaussian (q = 1), Opacus' subsampled
    Gaussian curve otherwise; no merging, no accountant object."""
    total = [0.0] * len(ORDERS)
    for sigma, q, steps in entries:
        if q == 1.0:
            curve = [a * steps / (2 * sigma**2) for a in ORDERS]
        else:
            curve = list(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS))
        total = [t + c for t, c in zip(total, curve, strict=True)]
    eps, _ = get_privacy_spent(orders=ORDERS, rdp=total, delta=delta)
    return float(eps)


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a mu-GDP mechanism at delta (Balle and Wang 2018, Theorem 8)."""

    def excess(eps: float) -> float:
        return (
            gaussian.cdf(mu / 2 - eps / mu) - math.exp(eps) * gaussian.cdf(-mu / 2 - eps / mu)
        ) - delta

    return brentq(excess, 0.0, 100.0)


def test_epsilon_with_tuning_is_the_direct_rdp_sum_of_every_tuning_run_and_the_final_run():
    score, stats = (10.0, 1.0, 1), (5.0, 1.0, 2)
    tuning_runs = [[stats, score, (1.1, 0.02, 50)] for _ in range(3)]
    final = [stats, (0.9, 0.01, 100)]
    ours = epsilon_with_tuning(composed(tuning_runs), final, 1e-5, "rdp")
    every = [entry for run in [*tuning_runs, final] for entry in run]
    assert ours.accountant == "rdp"
    assert ours.epsilon == pytest.approx(direct_rdp_epsilon(every, 1e-5), rel=0.02)
    # More than the final run alone, and more than the tuning runs alone.
    alone = epsilon_with_tuning((), final, 1e-5, "rdp").epsilon
    assert ours.epsilon > alone > 0


def test_epsilon_with_tuning_of_gaussian_releases_is_the_analytic_gaussian_under_prv():
    """With every release a full-batch Gaussian, the composition is mu-GDP with
    mu^2 = sum(steps / sigma^2), whose epsilon has a closed form: PRV must find it."""
    tuning = composed([[(10.0, 1.0, 1), (4.0, 1.0, 3)]] * 4)
    final = [(3.0, 1.0, 2)]
    mu = math.sqrt(4 * (1 / 100 + 3 / 16) + 2 / 9)
    exact = analytic_gaussian_epsilon(mu, 1e-5)
    ours = epsilon_with_tuning(tuning, final, 1e-5, "prv")
    assert ours.accountant == "prv"
    assert exact - 1e-3 <= ours.epsilon <= exact + 0.05


def test_a_tuning_cell_is_keyed_by_its_score_noise_and_the_final_cells_are_not(suite_file):
    suite = load_suite(suite_file)
    cells = tune_cells(suite)
    assert {c.score_noise for c in cells} == {3.0}
    exact = dataclasses.replace(cells[0], score_noise=None)  # a run that published exact scores
    assert exact.run_key != cells[0].run_key
    other = dataclasses.replace(cells[0], score_noise=5.0)
    assert other.run_key != cells[0].run_key
    assert all(c.score_noise is None for c in suite.cells())
    default = load_suite(suite_file, []).tune
    assert default is not None and default.score_noise == 3.0


@pytest.mark.parametrize("given", ["0", "-1.0", "true", "loud"])
def test_a_score_noise_that_is_not_a_positive_number_is_a_config_error(tmp_path, given):
    path = tmp_path / "bad.yaml"
    path.write_text(SUITE.replace("score_noise: 3.0", f"score_noise: {given}"))
    with pytest.raises(ConfigError, match=r"tune\.score_noise: must be a number > 0"):
        load_suite(path)


def test_two_tuning_cells_draw_independent_score_noise_and_one_cell_the_same(suite_file):
    low, high = tune_cells(load_suite(suite_file))

    def draw(cell):
        return float(torch.randn((), generator=score_generator(cell), dtype=torch.float64))

    assert draw(low) != draw(high)
    assert draw(low) == draw(low)


def _values(node):
    """Every number anywhere in a JSON value."""
    if isinstance(node, dict):
        return [v for x in node.values() for v in _values(x)]
    if isinstance(node, list):
        return [v for x in node for v in _values(x)]
    return [node] if isinstance(node, (int, float)) and not isinstance(node, bool) else []


def test_a_tuned_sweep_publishes_noisy_scores_and_the_independent_epsilon_with_tuning(
    suite_file, tmp_path, monkeypatch
):
    """Tuning records hold the noisy score only (no exact accuracy anywhere in them), charge it,
    and each final record's epsilon_with_tuning is the direct RDP sum over the tuning records'
    histories and the final run's."""
    exact_counts = []
    real = bench.train.cell.predict

    def counted(model, data, *args, **kwargs):
        predicted = real(model, data, *args, **kwargs)
        exact_counts.append(int((predicted == data.test_y).sum()))
        return predicted

    monkeypatch.setattr(bench.train.cell, "predict", counted)
    out = tmp_path / "out"
    run_suite(load_suite(suite_file), RunOptions(out_dir=out, progress=False, report=False))
    records = read_records(out / "records.jsonl").records
    tuning = [r for r in records if r["stage"] == "tune"]
    (final,) = [r for r in records if r["stage"] == "final"]
    assert len(tuning) == 2 and len(exact_counts) == 3
    for record, count in zip(tuning, exact_counts, strict=False):
        assert record["val_score_noise"] == 3.0
        assert record["val_acc"] != count / 64 and not (record["val_acc"] * 64).is_integer()
        assert count / 64 not in _values(record)
        assert any("validation score" in c["description"] for c in record["privacy_charges"])
        assert record["epsilon_with_tuning"] is None
    assert str(exact_counts[0] / 64) not in (out / "records.jsonl").read_text()

    def history(record, steps):
        charges = record["privacy_charges"]
        entries = [(c["noise_multiplier"], c["sample_rate"], c["steps"]) for c in charges]
        return [*entries, (record["noise_multiplier"], record["sample_rate"], steps)]

    every = [e for r in tuning for e in history(r, r["steps"])]
    every += history(final, final["steps_done"])
    expected = direct_rdp_epsilon(every, 1e-3)
    assert final["epsilon_with_tuning"] == pytest.approx(expected, rel=0.02)
    assert final["epsilon_with_tuning"] > final["epsilon_spent"]
    assert final["epsilon_with_tuning_method"] == "composition"
    suite = json.loads((out / "suite.json").read_text())
    board = render_leaderboard(records, [], suite, run_dir=out, baseline="group_norm", alpha=0.05)
    shown = f"{final['epsilon_with_tuning']:.2f}"
    assert f"- **ε with tuning:** ε = {shown} at δ = 0.001" in board
    assert "noisy count" in board and "predate" not in board


def test_a_report_of_records_that_predate_epsilon_with_tuning_says_their_epsilon_excludes_it():
    tune = {"stage": "tune", "tuned": {"training.lr": 1.0}, "val_acc": 0.2642, "n_val": 5000}
    records = [
        make_record("r", "group_norm", 0, None, **tune),
        make_record("r", "group_norm", 0, 0.5, stage="final", tuned={"training.lr": 1.0}),
    ]
    records[0]["run_key"] += "|tune"
    suite = {"name": "t", "tune": {"keys": {"training.lr": [1.0]}}}
    board = render(records, suite)
    header = next(line for line in board.splitlines() if line.startswith("- **ε with tuning:**"))
    assert "predate `epsilon_with_tuning`" in header and "excludes the tuning stage" in header
    assert "exact counts over the validation split" in board
    assert "ε with tuning" not in render(records[1:], {"name": "t"})


def render(records, suite):
    return render_leaderboard(
        records, [], suite, run_dir=Path("t"), baseline="group_norm", alpha=0.05
    )
