"""Tests of the leaderboard statistics: known answers from scipy, calibration by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from bench.results import stats

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


def test_rank_groups_put_norms_tied_with_the_best_first_and_others_by_position() -> None:
    acc = {
        "best": seeds([0.70, 0.71, 0.69, 0.70]),
        "close": seeds([0.70, 0.70, 0.69, 0.705]),
        "bad": seeds([0.50, 0.51, 0.49, 0.50]),
        "single": {0: 0.99},
    }
    assert stats.rank_groups(acc) == {"single": None, "best": 1, "close": 1, "bad": 4}


def test_rank_groups_without_two_seeds_anywhere_rank_nothing() -> None:
    assert stats.rank_groups({"a": {0: 0.5}, "b": {0: 0.6}}) == {"a": None, "b": None}


def test_analysis_without_baseline_values_compares_nothing() -> None:
    analysis = stats.analyse_backbone({"a": seeds(A), "b": seeds(B)}, "group_norm")
    assert not analysis.has_baseline
    assert {r.verdict for r in analysis.results} == {stats.NO_BASELINE}
    assert [(r.norm, r.rank_group) for r in analysis.results] == [("a", 1), ("b", 2)]


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
        any_rank += any(r.rank_group != 1 for r in analysis.results)
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
        alone_first += [n for n, r in results.items() if r.rank_group == 1] == ["scale_norm"]
    assert found >= 0.98 * n_suites
    assert alone_first >= 0.98 * n_suites
