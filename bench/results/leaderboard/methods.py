"""The leaderboard's statement of the statistics it uses: its Methods section, near the end."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results.leaderboard.markdown import join, number_text
from bench.results.stats import BOOTSTRAP_RESAMPLES, BackboneAnalysis


def methods_section(alpha: float, analyses: Sequence[BackboneAnalysis]) -> list[str]:
    """The Methods section: its heading and the statistics statement."""
    return ["## Methods", "", *methods_lines(alpha, analyses)]


def methods_lines(alpha: float, analyses: Sequence[BackboneAnalysis]) -> list[str]:
    """The statistics statement: what each column and section means and how it was tested.

    One statement of a method, so it is a single list of sentences, not split further.
    """
    tests: dict[str, int] = {}
    for analysis in analyses:
        for test, n in analysis.tests_used.items():
            tests[test] = tests.get(test, 0) + n
    used = join([f"{test} ×{n}" for test, n in sorted(tests.items())], "none (too few seeds)")
    return [
        f"**Statistics** (α = {number_text(alpha)}):",
        "",
        "- Intention to treat (the primary analysis): every run that started and decided its "
        "outcome counts. A failed run (diverged, by `training.divergence_check`, or crashed) is "
        "scored at chance accuracy "
        "(1 / classes), and so is an ok run that ended within `report.collapse_pp` (default 2) "
        "pp of chance, flagged collapsed: a method that delivers no model scores as one. The "
        "failures column gives failed plus collapsed runs over attempted ones with an exact "
        "(Clopper-Pearson) binomial interval. The per-protocol analysis (ok runs only, at "
        "their own accuracy) follows a table that has a failure, as a sensitivity analysis.",
        "- Accuracy: mean over seeds with a 95% Student-t interval; one seed gives no interval.",
        "- Δ vs baseline (percentage points, 95% interval): paired t-test on the seeds both norms "
        "ran when they share at least 2 (pairing by seed removes the variance a seed shares "
        f"across norms), otherwise Welch's unpaired t-test. Tests used here: {used}. Beside it, "
        "the exact sign-flip (permutation) p of the same paired differences, which assumes "
        "only symmetry about 0; with n seeds it cannot go below 2 / 2^n (0.0625 for 5), so a "
        "verdict significant by the t-test alone says normality carries it.",
        "- Families: each p-value belongs to one family, Holm-corrected within it and named "
        "under its table. The primary family is every norm against the baseline at the primary "
        "grid point (`report.primary`; default: the last value the grid lists of each swept "
        "key), on every backbone: with several backbones their primary tables are one family, "
        "so the suite's primary claims hold at α together; every other family (other grid "
        "points, letters, swept-value effects, the blocked model's columns) is exploratory. "
        "A verdict of better or worse needs a corrected p ≤ α, otherwise no significant "
        "difference.",
        "- Graded evidence: P(Δ below / within / above ±`report.rope_pp` pp, default 1, the "
        "region of practical equivalence), from the Student-t posterior of the mean difference "
        "(Bayesian paired comparison, non-informative prior). Where there is no significant "
        "difference, two one-sided tests (TOST, at α, per comparison) say whether the "
        "difference is shown to lie within that region (equivalent) or not.",
        "- Letters (compact letter display): every pair of norms with at least 2 seeds on the "
        "backbone is tested as above and the p-values are Holm-corrected over all pairs of the "
        "backbone; norms sharing a letter are not significantly different, norms with no letter "
        "in common are. Each letter is a maximal set of mutually non-different norms (Piepho's "
        "insert-absorb algorithm), lettered in order of mean accuracy (the best norm is in a). "
        "Not being different is not transitive: a ~ b and b ~ c with a ≁ c reads a, ab, b. —: "
        "not tested (fewer than 2 seeds).",
        "- Detectable Δ (80% power): the smallest true difference from the baseline that the "
        "row's test finds with 80% probability, given its observed standard error: the "
        "noncentrality at which a noncentral t (the test's df) exceeds the two-sided critical "
        "value with probability 0.8, times the standard error. The level is α/m, m the number "
        "of baseline comparisons tested in the table's family: Holm's first threshold, which the "
        "verdict must pass when a single norm differs, so the verdicts' power is at least this. "
        "The power line under each table does the same with the pooled SD of the paired "
        "differences, and gives the seeds a 1 pp difference would need. The SDs are estimated "
        "from few seeds: read these figures as indicative.",
        *_grouping_bullets(),
        "",
    ]


def _grouping_bullets() -> list[str]:
    """The statement's bullets on the sections that group tables: agreement, sweeps, rankings
    across backbones or datasets, and the test-set uncertainty under the primary tables."""
    return [
        "- Rank agreement (when the grid sweeps an extra key): Kendall's τ-b between the norms' "
        "rankings by mean accuracy (intention to treat) at two values of the key, with a 95% "
        "percentile bootstrap "
        f"interval over seeds ({BOOTSTRAP_RESAMPLES} resamples, seeds redrawn jointly for "
        "every cell, fixed generator seed).",
        "- Swept keys: one blocked model per key, accuracy ~ norm × value + seed block, with "
        "contrasts, norm × value interactions and per-norm slopes per doubling.",
        "- Across backbones (at the same values of every other swept key) and across datasets "
        "(a grid sweeping `data.source`), where there are at least 2: average rank by mean "
        "accuracy and a Friedman test on a complete norms × blocks table, with its exact "
        "permutation p-value.",
        "- Test-set uncertainty (under each primary table, from the runs' per-example "
        "predictions): each comparison's 95% paired t-interval (seeds − 1 df) with the test "
        "set's sampling variance added (over the test examples, shared by every run), failed "
        "and collapsed runs at chance on every example.",
    ]
