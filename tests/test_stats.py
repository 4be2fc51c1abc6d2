"""Tests of the leaderboard statistics: known answers from scipy, calibration by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bench.results import stats
from bench.results.leaderboard import markdown

A = [0.612, 0.605, 0.619, 0.598, 0.623]
B = [0.601, 0.600, 0.611, 0.590, 0.612]
C = [0.640, 0.652, 0.633, 0.661]


def seeds(values: list[float], start: int = 0) -> dict[int, float]:
    return {start + i: v for i, v in enumerate(values)}


def test_mean_ci_half_width_matches_scipy_t_interval() -> None:
    result = stats.mean_ci(A)
    low, high = sps.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=sps.sem(A))
    assert result.mean == pytest.approx(np.mean(A))
    assert result.low == pytest.approx(low)
    assert result.high == pytest.approx(high)
    assert result.n == 5


def test_mean_ci_of_one_value_has_no_interval() -> None:
    result = stats.mean_ci([0.7])
    assert (result.mean, result.half_width, result.low, result.n) == (0.7, None, None, 1)


@pytest.mark.parametrize("values", [[], [0.5, math.nan]], ids=["empty", "nan"])
def test_mean_ci_rejects_empty_or_non_finite_values(values: list[float]) -> None:
    with pytest.raises(ValueError):
        stats.mean_ci(values)


def test_paired_comparison_matches_scipy_ttest_rel() -> None:
    result = stats.compare(seeds(A), seeds(B))
    reference = sps.ttest_rel(A, B)
    low, high = reference.confidence_interval(0.95)
    assert result.test == stats.PAIRED
    assert result.pvalue == pytest.approx(reference.pvalue)
    assert result.diff == pytest.approx(np.mean(np.subtract(A, B)))
    assert result.diff - result.half_width == pytest.approx(low)
    assert result.diff + result.half_width == pytest.approx(high)
    assert result.n == 5


def test_paired_comparison_uses_only_the_shared_seeds() -> None:
    values = {**seeds(A), 99: 0.99}  # a seed the reference never ran
    result = stats.compare(values, seeds(B[:4]))
    assert result.test == stats.PAIRED
    assert result.n == 4
    assert result.pvalue == pytest.approx(sps.ttest_rel(A[:4], B[:4]).pvalue)


def test_unpaired_comparison_matches_scipy_welch() -> None:
    result = stats.compare(seeds(C, start=10), seeds(A))
    reference = sps.ttest_ind(C, A, equal_var=False)
    low, high = reference.confidence_interval(0.95)
    assert result.test == stats.WELCH
    assert result.pvalue == pytest.approx(reference.pvalue)
    assert result.diff == pytest.approx(np.mean(C) - np.mean(A))
    assert result.diff - result.half_width == pytest.approx(low)
    assert result.diff + result.half_width == pytest.approx(high)


def test_one_shared_seed_falls_back_to_welch() -> None:
    result = stats.compare(seeds(C, start=4), seeds(A))  # shares seed 4 only
    assert result.test == stats.WELCH
    assert result.pvalue == pytest.approx(sps.ttest_ind(C, A, equal_var=False).pvalue)


@pytest.mark.parametrize(
    ("values", "reference"),
    [({0: 0.6}, seeds(A)), (seeds(A), {7: 0.6}), ({0: 0.6}, {0: 0.5})],
    ids=["one-seed-norm", "one-seed-reference", "one-pair"],
)
def test_comparison_with_fewer_than_two_seeds_is_not_tested(
    values: dict[int, float], reference: dict[int, float]
) -> None:
    result = stats.compare(values, reference)
    assert not result.tested
    assert result.pvalue is None and result.half_width is None
    assert result.reason == "n<2"
    assert result.diff == pytest.approx(
        np.mean(list(values.values())) - np.mean(list(reference.values()))
    )


def test_identical_values_give_p_one_and_a_constant_shift_gives_p_zero() -> None:
    same = stats.compare(seeds(A), seeds(A))
    assert (same.diff, same.half_width, same.pvalue) == (0.0, 0.0, 1.0)
    shifted = stats.compare(seeds([0.5, 0.5, 0.5]), seeds([0.25, 0.25, 0.25]))
    assert (shifted.diff, shifted.pvalue) == (0.25, 0.0)


def test_holm_matches_hand_computation() -> None:
    # Sorted: 0.005*4 = 0.02; 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> max(0.06, 0.04).
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_leaves_untested_comparisons_out_of_the_family() -> None:
    adjusted = stats.holm([0.4, None, 0.3])  # m = 2, not 3
    assert adjusted[1] is None
    assert adjusted[0] == pytest.approx(0.6)
    assert adjusted[2] == pytest.approx(0.6)
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]
    assert stats.holm([]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
def test_holm_is_between_raw_p_and_one_and_keeps_the_order_of_p(pvalues: list[float]) -> None:
    adjusted = stats.holm(pvalues)
    for p, q in zip(pvalues, adjusted, strict=True):
        assert p <= q <= 1.0
    in_order_of_p = [q for _, q in sorted(zip(pvalues, adjusted, strict=True))]
    assert in_order_of_p == sorted(in_order_of_p)


def test_verdict_gives_a_direction_only_when_significant() -> None:
    better = stats.Comparison(0.02, 0.01, 0.001, stats.PAIRED, 5)
    worse = stats.Comparison(-0.02, 0.01, 0.001, stats.PAIRED, 5)
    untested = stats.Comparison(0.3, None, None, None, 1, reason="n<2")
    assert stats.verdict(better, 0.01, 0.05) == stats.BETTER
    assert stats.verdict(worse, 0.05, 0.05) == stats.WORSE
    assert stats.verdict(better, 0.051, 0.05) == stats.NO_DIFFERENCE
    assert stats.verdict(untested, None, 0.05) == "not tested (n<2)"


@pytest.mark.parametrize(
    ("order", "different", "expected"),
    [
        ("abc", [], {"a": "a", "b": "a", "c": "a"}),
        ("abc", [("a", "b"), ("a", "c"), ("b", "c")], {"a": "a", "b": "b", "c": "c"}),
        # The chain: a ~ b and b ~ c, but a !~ c.
        ("abc", [("a", "c")], {"a": "a", "b": "ab", "c": "b"}),
        # A staircase: each norm tied with its neighbours only.
        (
            "abcd",
            [("a", "c"), ("a", "d"), ("b", "d")],
            {"a": "a", "b": "ab", "c": "bc", "d": "c"},
        ),
        # Not contiguous: the noisy third norm is tied with both, the first two differ.
        ("abc", [("b", "a")], {"a": "a", "b": "b", "c": "ab"}),
        # Two clusters; the pair order given does not matter.
        (
            "abcd",
            [("c", "a"), ("d", "a"), ("c", "b"), ("d", "b")],
            {"a": "a", "b": "a", "c": "b", "d": "b"},
        ),
    ],
    ids=["all-tied", "all-different", "chain", "staircase", "non-contiguous", "two-clusters"],
)
def test_compact_letters_match_worked_examples(
    order: str, different: list[tuple[str, str]], expected: dict[str, str]
) -> None:
    assert stats.compact_letters(list(order), different) == expected


def test_compact_letters_share_a_letter_exactly_when_not_different() -> None:
    rng = np.random.default_rng(5)
    names = list("abcdef")
    for _ in range(200):
        pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]]
        different = [pair for pair in pairs if rng.random() < 0.4]
        letters = stats.compact_letters(names, different)
        for x, y in pairs:
            assert bool(set(letters[x]) & set(letters[y])) == ((x, y) not in different)


# Five seeds; per-seed base accuracies shared by the norms (the pairing).
BASE = np.array([0.60, 0.62, 0.61, 0.63, 0.59])


def test_letter_display_of_a_chain_on_data() -> None:
    """top and bottom differ by a steady 2 pp; middle is 1 pp from each but noisy: a, ab, b."""
    acc = {
        "top": seeds(list(BASE + 0.02 + np.array([0.001, -0.001, 0.0, 0.0005, -0.0005]))),
        "middle": seeds(list(BASE + 0.01 + np.array([0.02, -0.02, 0.015, -0.015, 0.0]))),
        "bottom": seeds(list(BASE + np.array([0.0, 0.0005, -0.0005, 0.001, -0.001]))),
        "single": {0: 0.99},
    }
    assert stats.letter_display(acc) == {"single": None, "top": "a", "middle": "ab", "bottom": "b"}


def test_letter_display_without_two_seeds_anywhere_letters_nothing() -> None:
    assert stats.letter_display({"a": {0: 0.5}, "b": {0: 0.6}}) == {"a": None, "b": None}


def test_analysis_without_baseline_values_compares_nothing() -> None:
    analysis = stats.analyse_backbone({"a": seeds(A), "b": seeds(B)}, "group_norm")
    assert not analysis.has_baseline
    assert {r.verdict for r in analysis.results} == {stats.NO_BASELINE}
    assert [(r.norm, r.letters) for r in analysis.results] == [("a", "a"), ("b", "b")]
    assert analysis.power is None


def test_average_ranks_average_tied_means() -> None:
    means = {"r9": {"a": 0.7, "b": 0.7, "c": 0.5}, "wrn": {"a": 0.6, "b": 0.8, "c": 0.4}}
    ranks = stats.average_ranks(means)
    assert ranks["a"].rank == pytest.approx((1.5 + 2) / 2)
    assert ranks["b"].rank == pytest.approx((1.5 + 1) / 2)
    assert ranks["c"] == stats.AverageRank(3.0, 2)


def test_friedman_matches_scipy() -> None:
    means = {
        "r9": {"a": 0.70, "b": 0.65, "c": 0.60, "d": 0.61},
        "wrn": {"a": 0.72, "b": 0.69, "c": 0.64, "d": 0.60},
        "r18": {"a": 0.69, "b": 0.70, "c": 0.61, "d": 0.62},
    }
    result = stats.friedman(means)
    reference = sps.friedmanchisquare(
        *[[means[b][n] for b in ("r18", "r9", "wrn")] for n in "abcd"]
    )
    assert result.ran
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.pvalue == pytest.approx(reference.pvalue)
    assert result.norms == ("a", "b", "c", "d")
    assert result.backbones == ("r18", "r9", "wrn")


def test_friedman_drops_the_norm_or_backbone_that_costs_fewer_cells() -> None:
    full = {"a": 0.7, "b": 0.6, "c": 0.5}
    # "d" exists on one backbone only: dropping it keeps 3 norms x 3 backbones.
    result = stats.friedman({"r9": {**full, "d": 0.4}, "wrn": full, "r18": full})
    assert result.ran and result.norms == ("a", "b", "c") and len(result.backbones) == 3
    # "r18" has only two norms: dropping it keeps 4 norms x 2 backbones.
    four = {**full, "d": 0.4}
    result = stats.friedman({"r9": four, "wrn": four, "r18": {"a": 0.7, "b": 0.6}})
    assert result.ran and len(result.norms) == 4 and result.backbones == ("r9", "wrn")


@pytest.mark.parametrize(
    ("means", "reason"),
    [
        ({"r9": {"a": 0.7, "b": 0.6, "c": 0.5}}, "needs >= 2 backbones"),
        ({"r9": {"a": 0.7, "b": 0.6}, "wrn": {"a": 0.7, "b": 0.6}}, "needs >= 3 norms"),
        (
            {"r9": {"a": 0.7, "b": 0.6, "c": 0.5}, "wrn": {"d": 0.7, "e": 0.6, "f": 0.5}},
            "common backbones",
        ),
        ({"r9": dict.fromkeys("abc", 0.5), "wrn": dict.fromkeys("abc", 0.6)}, "tie"),
    ],
    ids=["one-backbone", "two-norms", "no-common-table", "all-ties"],
)
def test_friedman_says_why_it_was_not_run(means: dict, reason: str) -> None:
    result = stats.friedman(means)
    assert not result.ran
    assert result.statistic is None
    assert reason in result.reason


# Calibration: the decision rules, run on simulated suites, must keep their promised error rates.
ALPHA = 0.05
NORMS = ("group_norm", "layer_norm", "scale_norm", "kernel_norm", "none")


def simulate(
    rng: np.random.Generator, shift: dict[str, float], shared_seeds: bool
) -> dict[str, dict[int, float]]:
    """One backbone: 5 norms x 5 seeds, gaussian accuracy with a per-seed effect shared by norms."""
    seed_effect = rng.normal(0.0, 0.01, size=25)
    acc = {}
    for index, norm in enumerate(NORMS):
        seed_ids = range(5) if shared_seeds else range(5 * index, 5 * index + 5)
        acc[norm] = {
            s: 0.6 + shift.get(norm, 0.0) + seed_effect[s] + rng.normal(0.0, 0.005)
            for s in seed_ids
        }
    return acc


def rate_bound(n: int, alpha: float) -> int:
    """Most false positives out of n that are still plausible (p >= 0.001) at a true rate alpha."""
    return int(sps.binom.ppf(0.999, n, alpha))


@pytest.mark.parametrize("shared_seeds", [True, False], ids=["paired", "welch"])
def test_false_difference_rate_under_the_null_is_at_most_alpha(shared_seeds: bool) -> None:
    rng = np.random.default_rng(20240501)
    n_suites = 300 if shared_seeds else 150
    any_verdict = any_rank = 0
    for _ in range(n_suites):
        analysis = stats.analyse_backbone(simulate(rng, {}, shared_seeds), "group_norm", ALPHA)
        any_verdict += any(r.verdict in (stats.BETTER, stats.WORSE) for r in analysis.results)
        any_rank += any(r.letters != "a" for r in analysis.results)
    assert any_verdict <= rate_bound(n_suites, ALPHA)
    assert any_rank <= rate_bound(n_suites, ALPHA)


def test_clearly_better_norm_is_found_better_in_nearly_all_simulations() -> None:
    rng = np.random.default_rng(7)
    n_suites = 100
    found = alone_first = 0
    for _ in range(n_suites):
        acc = simulate(rng, {"scale_norm": 0.05}, shared_seeds=True)
        results = {r.norm: r for r in stats.analyse_backbone(acc, "group_norm", ALPHA).results}
        found += results["scale_norm"].verdict == stats.BETTER
        alone_first += [n for n, r in results.items() if "a" in r.letters] == ["scale_norm"]
    assert found >= 0.98 * n_suites
    assert alone_first >= 0.98 * n_suites


# Power: the reported detectable differences must be what a simulation of the test sees.
N_SIMULATED = 2000


def paired_rejection_rate(
    rng: np.random.Generator, diff: float, sd: float, n: int, level: float
) -> float:
    """Share of N_SIMULATED suites, each n paired differences ~ N(diff, sd), whose paired t-test
    rejects at ``level`` (vectorised: one row per suite)."""
    d = rng.normal(diff, sd, size=(N_SIMULATED, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float(np.mean(2 * sps.t.sf(np.abs(t), n - 1) <= level))


def test_t_test_power_is_the_level_at_zero_and_matches_a_noncentral_t_simulation() -> None:
    assert stats.t_test_power(0.0, 4, 0.05) == pytest.approx(0.05)
    # df = 1 far in the tail, where scipy's nct.cdf gives nan: T = (Z + nc) / sqrt(V / df).
    rng = np.random.default_rng(0)
    t = (rng.normal(size=200_000) + 50.0) / np.sqrt(rng.chisquare(1, size=200_000))
    simulated = np.mean(np.abs(t) > sps.t.ppf(1 - 0.0125 / 2, 1))
    assert stats.t_test_power(50.0, 1, 0.0125) == pytest.approx(simulated, abs=0.01)


@pytest.mark.parametrize(
    ("n", "level"), [(3, 0.05 / 3), (5, 0.05), (10, 0.05 / 4), (2, 0.05)], ids=str
)
def test_paired_test_rejects_80_percent_at_the_reported_detectable_difference(
    n: int, level: float
) -> None:
    sd = 0.02
    detectable = stats.detectable_difference(sd / math.sqrt(n), n - 1, level)
    rate = paired_rejection_rate(np.random.default_rng(n), detectable, sd, n, level)
    assert 0.75 <= rate <= 0.85


def test_backbone_power_is_a_lower_bound_on_the_holm_verdicts_power() -> None:
    """One norm of three differs from the baseline by the backbone's reported detectable
    difference: Holm over the three comparisons finds it in at least ~80% of suites, and the
    single test at the reported level in 80% +/- 5%."""
    rng = np.random.default_rng(11)
    n, sd = 4, 0.01
    base = rng.normal(0.6, 0.01, size=n)
    observed = {
        "baseline": seeds(list(base)),
        **{k: seeds(list(base + rng.normal(0, sd, size=n))) for k in ("x", "y", "z")},
    }
    power = stats.analyse_backbone(observed, "baseline", ALPHA).power
    assert power is not None and power.m == 3 and power.level == pytest.approx(ALPHA / 3)
    assert power.n == n
    rate = paired_rejection_rate(rng, power.detectable, power.sd, n, power.level)
    assert 0.75 <= rate <= 0.85
    diffs = rng.normal(0.0, power.sd, size=(N_SIMULATED, 3, n))
    diffs[:, 0] += power.detectable
    t = diffs.mean(axis=2) / (diffs.std(axis=2, ddof=1) / math.sqrt(n))
    p = 2 * sps.t.sf(np.abs(t), n - 1)
    # Holm step-down, vectorised: the differing norm is rejected when every p-value sorted
    # before it passes its threshold alpha / (m - rank), and it passes its own.
    order = np.argsort(p, axis=1)
    thresholds = ALPHA / (3 - np.arange(3))
    passes = np.cumprod(np.take_along_axis(p, order, axis=1) <= thresholds, axis=1)
    found = np.take_along_axis(passes, np.argsort(order, axis=1), axis=1)[:, 0]
    assert found.mean() >= 0.75


def test_seeds_needed_is_the_first_seed_count_with_80_percent_power() -> None:
    sd, level = 0.02, 0.05 / 4
    n = stats.seeds_needed(0.01, sd, level)
    assert n is not None and n > 2
    assert (
        stats.paired_power(0.01, sd, n, level) >= 0.8 > stats.paired_power(0.01, sd, n - 1, level)
    )
    assert paired_rejection_rate(np.random.default_rng(3), 0.01, sd, n, level) >= 0.75
    assert stats.seeds_needed(0.01, 10.0, level, max_seeds=50) is None
    assert stats.seeds_needed(0.01, 0.0, level) == 2


def test_zero_spread_makes_every_difference_detectable() -> None:
    assert stats.detectable_difference(0.0, None, 0.05) == 0.0
    assert stats.detectable_difference(None, None, 0.05) is None


# Rank agreement: Kendall's tau-b and its bootstrap interval, against scipy.
FIRST = {
    "a": {0: 0.70, 1: 0.71, 2: 0.69},
    "b": {0: 0.66, 1: 0.64, 2: 0.65},
    "c": {0: 0.60, 1: 0.63, 2: 0.61},
    "d": {0: 0.58, 1: 0.57, 2: 0.61},
    "e": {0: 0.50, 1: 0.52},
}
SECOND = {
    "a": {0: 0.80, 1: 0.78, 2: 0.79},
    "b": {0: 0.77, 1: 0.79, 2: 0.80},
    "c": {0: 0.70, 1: 0.71, 2: 0.69},
    "d": {0: 0.72, 1: 0.70, 2: 0.73},
    "e": {0: 0.60, 1: 0.61, 2: 0.59},
    "only_here": {0: 0.9, 1: 0.9},
}


def cell_means(setting: dict, norms: list[str]) -> np.ndarray:
    return np.array([np.mean([setting[n][s] for s in sorted(setting[n])]) for n in norms])


def test_kendall_tau_b_matches_scipy_with_and_without_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        x, y = rng.integers(0, 4, size=(2, 6)).astype(float)  # many ties
        expected = sps.kendalltau(x, y).statistic
        got = float(stats.kendall_tau_b(x, y))
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)


def test_rank_agreement_point_estimate_matches_scipy_on_the_shared_norms() -> None:
    result = stats.rank_agreement(FIRST, SECOND)
    norms = ["a", "b", "c", "d", "e"]
    assert result.norms == tuple(norms)
    expected = sps.kendalltau(cell_means(FIRST, norms), cell_means(SECOND, norms)).statistic
    assert result.tau == pytest.approx(expected)
    assert result.low <= result.tau <= result.high


def test_rank_agreement_interval_is_the_seed_joint_percentile_bootstrap_of_scipy_tau() -> None:
    """Replays the documented draws (one draw of seeds shared by every cell) and computes each
    resample's tau with scipy."""
    n_resamples, seed = 400, 9
    result = stats.rank_agreement(FIRST, SECOND, n_resamples=n_resamples, seed=seed)
    norms = list(result.norms)
    seeds = sorted({s for setting in (FIRST, SECOND) for n in norms for s in setting[n]})
    draws = np.random.default_rng(seed).integers(0, len(seeds), size=(n_resamples, len(seeds)))
    taus = []
    for row in draws:
        drawn = [seeds[j] for j in row]
        means = [
            [np.mean([setting[n][s] for s in drawn if s in setting[n]] or [np.nan]) for n in norms]
            for setting in (FIRST, SECOND)
        ]
        taus.append(sps.kendalltau(*means).statistic if np.all(np.isfinite(means)) else np.nan)
    taus = np.array(taus)
    low, high = np.percentile(taus[np.isfinite(taus)], [2.5, 97.5])
    assert (result.low, result.high) == (pytest.approx(low), pytest.approx(high))


def test_a_rank_reversal_gives_a_negative_tau_with_an_interval_below_zero() -> None:
    reversed_second = {
        norm: {s: 1.0 - v for s, v in cells.items()} for norm, cells in FIRST.items()
    }
    result = stats.rank_agreement(FIRST, reversed_second)
    assert result.tau == pytest.approx(-1.0)
    assert result.high < 0


def test_rank_agreement_needs_three_shared_norms() -> None:
    result = stats.rank_agreement({"a": {0: 0.5}, "b": {0: 0.6}}, {"a": {0: 0.5}, "c": {0: 0.4}})
    assert result.tau is None and "needs >= 3 norms" in result.reason


def test_trend_is_the_least_squares_slope_with_a_t_interval_on_n_minus_2_df() -> None:
    # Two seeds at log2(eps) = 0 and 3: the line goes through the means (0.51 and 0.61), slope
    # 0.1 / 3; residuals +-0.01, so s^2 = 4e-4 / 2, se = sqrt(2e-4 / 9) = 0.004714, and
    # t(0.975, 2) = 4.303 gives a half-width of 0.02028.
    fit = stats.trend([0, 0, 3, 3], [0.50, 0.52, 0.60, 0.62])
    assert fit.slope == pytest.approx(0.1 / 3)
    assert fit.se == pytest.approx(math.sqrt(2e-4 / 9))
    assert fit.half_width == pytest.approx(0.02028, abs=1e-5)
    assert fit.df == 2 and fit.n == 4
    assert fit.pvalue == pytest.approx(2 * sps.t.sf((0.1 / 3) / math.sqrt(2e-4 / 9), 2))
    assert not stats.trend([1, 1, 1], [0.1, 0.2, 0.3]).tested  # one covariate value
    assert stats.trend([1, 2], [0.1, 0.2]).reason == "fewer than 3 runs"
    flat = stats.trend([0, 1, 2], [0.4, 0.4, 0.4])
    assert (flat.slope, flat.half_width, flat.pvalue) == (0.0, 0.0, 1.0)


def test_a_detectable_difference_above_100_pp_is_shown_as_unreachable() -> None:
    assert markdown.detectable_text(0.0543) == "5.43"
    assert markdown.detectable_text(1.0) == "100.00"
    assert markdown.detectable_text(21.95) == "> 100"  # no accuracy can move by 2195 pp
    assert markdown.detectable_text(None) == "—"
