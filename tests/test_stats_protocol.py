"""The statistics of the analysis protocol: intention to treat, exact permutation tests, graded
evidence and the blocked model, each against an independent computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.results import stats
from bench.results.leaderboard.markdown import interval_text
from bench.results.stats import exact
from bench.results.stats.blocked import Fit, paired_differences, setting_model, trend_model
from bench.results.stats.evidence import rope_evidence
from bench.results.stats.itt import failure_rate, intention_to_treat


def test_a_failed_run_is_scored_at_chance_and_counted_in_n() -> None:
    outcome = intention_to_treat({0: 0.6, 1: 0.6}, [2], chance=0.1)
    assert outcome.scores == {0: 0.6, 1: 0.6, 2: 0.1}
    assert (outcome.rate.failures, outcome.rate.attempted) == (1, 3)


def test_a_run_within_the_threshold_of_chance_is_collapsed_and_scored_at_chance() -> None:
    outcome = intention_to_treat({0: 0.6, 1: 0.1002, 2: 0.125}, [], chance=0.1, collapse=0.02)
    assert outcome.collapsed == (1,)
    assert outcome.scores == {0: 0.6, 1: 0.1, 2: 0.125}
    assert outcome.rate.failures == 1
    assert intention_to_treat({1: 0.1002}, [], chance=0.1, collapse=0.0).collapsed == ()


def test_a_failed_seed_that_was_rerun_ok_keeps_its_ok_run() -> None:
    assert intention_to_treat({0: 0.6}, [0], chance=0.1).scores == {0: 0.6}


def test_without_chance_failed_runs_are_left_out_and_nothing_collapses() -> None:
    outcome = intention_to_treat({0: 0.1}, [1], chance=None)
    assert outcome.scores == {0: 0.1} and outcome.collapsed == ()
    assert outcome.rate.failures == 1  # still counted as a failure


@pytest.mark.parametrize(("k", "n"), [(0, 5), (1, 5), (5, 5), (3, 12)])
def test_failure_interval_is_clopper_pearson(k: int, n: int) -> None:
    rate = failure_rate(k, n)
    low = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    assert (rate.low, rate.high) == (pytest.approx(low), pytest.approx(high))


def brute_sign_flip(d: list[float]) -> float:
    total = abs(sum(d))
    hits = [
        abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= total - 1e-12
        for signs in itertools.product((-1, 1), repeat=len(d))
    ]
    return sum(hits) / len(hits)


@pytest.mark.parametrize(
    "d", [[0.01, 0.02, 0.03, 0.04, 0.05], [0.03, -0.01, 0.02, 0.0, 0.02, -0.04], [0.1, 0.1]]
)
def test_sign_flip_p_matches_enumeration_by_hand(d: list[float]) -> None:
    assert exact.sign_flip_p(d) == pytest.approx(brute_sign_flip(d))


def test_five_seeds_cannot_give_a_sign_flip_p_below_one_sixteenth() -> None:
    assert exact.sign_flip_p([0.05, 0.06, 0.05, 0.07, 0.06]) == pytest.approx(2 / 32)
    comparison = stats.compare({s: 0.6 + 0.01 * s for s in range(5)}, dict.fromkeys(range(5), 0.5))
    assert comparison.pvalue < 0.001 and comparison.exact_p == pytest.approx(0.0625)


def brute_friedman_p(blocks: list[list[float]]) -> float:
    """Every arrangement of every block (no symmetry used), scipy's statistic on each."""

    def chi2(rows: list[list[float]]) -> float:
        return float(sps.friedmanchisquare(*np.array(rows).T).statistic)

    observed = chi2(blocks)
    stats_all = [
        chi2([list(p) for p in arrangement])
        for arrangement in itertools.product(*[itertools.permutations(b) for b in blocks])
    ]
    return float(np.mean(np.array(stats_all) >= observed - 1e-9))


@pytest.mark.parametrize(
    "blocks",
    [
        [[0.1, 0.2, 0.3], [0.2, 0.1, 0.3], [0.1, 0.3, 0.2]],
        [[0.5, 0.6, 0.7, 0.8], [0.55, 0.6, 0.9, 0.7]],
        [[0.1, 0.1, 0.3], [0.3, 0.2, 0.1], [0.2, 0.2, 0.1]],  # ties within blocks
    ],
)
def test_exact_friedman_p_matches_brute_force_enumeration(blocks: list[list[float]]) -> None:
    got = exact.friedman_permutation_p(blocks)
    assert got.method == exact.ENUMERATED
    assert got.pvalue == pytest.approx(brute_friedman_p(blocks))


def test_friedman_falls_back_to_monte_carlo_close_to_the_exact_p(monkeypatch) -> None:
    blocks = [[0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.4, 0.3], [0.1, 0.3, 0.2, 0.4]]
    exact_p = exact.friedman_permutation_p(blocks).pvalue
    monkeypatch.setattr(exact, "MAX_ENUMERATION", 10)
    monkeypatch.setattr(exact, "MONTE_CARLO_DRAWS", 20_000)
    estimate = exact.friedman_permutation_p(blocks)
    assert estimate.method == exact.MONTE_CARLO
    assert estimate.pvalue == pytest.approx(exact_p, abs=0.01)


def test_friedman_result_carries_the_exact_p_of_its_table() -> None:
    means = {
        "b1": {"a": 0.1, "b": 0.2, "c": 0.3},
        "b2": {"a": 0.2, "b": 0.1, "c": 0.3},
        "b3": {"a": 0.1, "b": 0.3, "c": 0.2},
    }
    result = stats.friedman(means)
    assert result.exact.pvalue == pytest.approx(
        brute_friedman_p([[0.1, 0.2, 0.3], [0.2, 0.1, 0.3], [0.1, 0.3, 0.2]])
    )


def test_rope_probabilities_sum_to_one_and_tost_agrees_with_the_90_percent_interval() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        base = {s: 0.5 + rng.normal(0, 0.01) for s in range(5)}
        other = {s: base[s] + rng.normal(rng.uniform(-0.02, 0.02), 0.004) for s in range(5)}
        comparison = stats.compare(other, base)
        e = rope_evidence(comparison, 0.01)
        assert e.below + e.inside + e.above == pytest.approx(1.0)
        half = sps.t.ppf(0.95, comparison.df) * comparison.se
        inside = comparison.diff - half > -0.01 and comparison.diff + half < 0.01
        assert e.equivalent(0.05) == inside


def test_rope_posterior_is_the_student_t_of_the_paired_differences() -> None:
    comparison = stats.compare({0: 0.52, 1: 0.55, 2: 0.53}, {0: 0.50, 1: 0.51, 2: 0.50})
    d = np.array([0.02, 0.04, 0.03])
    post = sps.t(2, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(3))
    e = rope_evidence(comparison, 0.01)
    assert (e.below, e.above) == (pytest.approx(post.cdf(-0.01)), pytest.approx(post.sf(0.01)))


def planted_sweep(slope: float = 0.006) -> dict:
    """Two norms over log2 x = 0..3, two seeds with large seed offsets and small noise; the
    norm "b" gains ``slope`` per doubling, the baseline "a" is flat. Norm -> x -> seed -> acc."""
    rng = np.random.default_rng(1)
    offsets = {0: -0.03, 1: 0.03}
    return {
        norm: {
            2**x: {s: 0.5 + offsets[s] + gain * x + rng.normal(0, 0.001) for s in offsets}
            for x in range(4)
        }
        for norm, gain in (("a", 0.0), ("b", slope))
    }


def test_blocked_model_recovers_a_planted_slope_that_per_cell_tests_miss() -> None:
    sweep = planted_sweep()
    b = sweep["b"]
    # Per cell: each value against the first by a 2-seed paired test, Holm over the table.
    judged = stats.compare_family([(b[v], b[1]) for v in (2, 4, 8)], alpha=0.05)
    assert all(j.verdict == stats.NO_DIFFERENCE for j in judged)
    # The old trend: one slope over the runs, seeds as independent replicates.
    xs = [math.log2(v) for v, seeds in b.items() for _ in seeds]
    ys = [acc for seeds in b.values() for acc in seeds.values()]
    assert stats.trend(xs, ys).pvalue > 0.05
    covariate = {v: math.log2(v) for v in (1, 2, 4, 8)}
    slope = trend_model(b, covariate).contrast({"slope": 1.0})
    assert slope.pvalue < 0.001
    assert abs(slope.estimate - 0.006) < slope.half_width
    differences = paired_differences(b, sweep["a"])
    interaction = trend_model(differences, covariate).contrast({"slope": 1.0})
    assert interaction.pvalue < 0.001 and abs(interaction.estimate - 0.006) < 0.001


def test_setting_model_change_is_the_mean_paired_change_with_seed_blocks() -> None:
    b = planted_sweep()["b"]
    fit = setting_model(b)
    c = fit.contrast({8: 1.0, 1: -1.0})
    assert c.estimate == pytest.approx(np.mean([b[8][s] - b[1][s] for s in (0, 1)]))
    # 8 runs, 4 setting means, 1 seed block: 3 residual df, where each paired test has 1.
    assert fit.df == 3
    # The same model by hand: residuals after removing setting and seed means (balanced).
    y = np.array([[b[v][s] for s in (0, 1)] for v in (1, 2, 4, 8)])
    resid = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    se = math.sqrt((resid**2).sum() / 3 * (2 / 2))
    assert c.se == pytest.approx(se)


def test_blocked_model_does_not_depend_on_the_order_records_arrived_in() -> None:
    """The series are built in records-file order; the same runs in another order must give
    the same numbers to the last bit (the published tables print them to 0.01 pp, where a
    last-bit difference in the fit flipped a digit)."""
    rng = np.random.default_rng(3)
    covariate = {"a": 0.0, "b": 1.0, "c": 2.0}
    for _ in range(20):
        series = {s: {seed: float(rng.random()) for seed in range(5)} for s in covariate}
        shuffled = {
            s: dict(reversed(list(seeds.items()))) for s, seeds in reversed(list(series.items()))
        }
        one, other = setting_model(series), setting_model(shuffled)
        assert one.contrast({"b": 1.0, "a": -1.0}) == other.contrast({"b": 1.0, "a": -1.0})
        one, other = trend_model(series, covariate), trend_model(shuffled, covariate)
        assert one.contrast({"slope": 1.0}) == other.contrast({"slope": 1.0})


def test_a_contrast_does_not_depend_on_the_last_bits_of_the_solve() -> None:
    """Another CPU's LAPACK lands a least-squares solution a few ulps from this one's; at an
    exact tie (a difference of 0.03805: means of accuracies in 1/10,000ths) that printed as
    +3.80 on one machine and +3.81 on another, so a published leaderboard did not rebuild
    byte-for-byte elsewhere. Coefficients an ulp either side give one contrast."""
    tie, cov = 0.03805, np.array([[1e-4]])
    contrasts = [
        Fit(("a",), np.array([b]), cov * (1 + e), 3, 0.95).contrast({"a": 1.0})
        for b, e in itertools.product(
            (np.nextafter(tie, 0.0), tie, np.nextafter(tie, 1.0)), (-2e-16, 0.0, 2e-16)
        )
    ]
    assert all(c == contrasts[0] for c in contrasts)
    assert contrasts[0].estimate == tie
    assert len({interval_text(c.estimate, c.half_width) for c in contrasts}) == 1


def test_means_and_slopes_do_not_depend_on_the_order_of_the_runs() -> None:
    """Seeds arrive in records-file order: (0.1 + 0.2) + 0.3 and (0.3 + 0.2) + 0.1 differ in
    the last bit, which a table printed to 0.01 pp can show."""
    values = [0.1, 0.2, 0.3]
    assert stats.mean_ci(values) == stats.mean_ci(values[::-1])
    rng = np.random.default_rng(4)
    for _ in range(20):
        xs = [float(v) for v in rng.integers(0, 4, 9)]
        ys = [float(v) for v in rng.random(9)]
        assert stats.trend(xs, ys) == stats.trend(xs[::-1], ys[::-1])
