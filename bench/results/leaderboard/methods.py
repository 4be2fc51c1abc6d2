"""The leaderboard's statement of the statistics it uses, under the header."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results.leaderboard.markdown import join, number_text
from bench.results.stats import BOOTSTRAP_RESAMPLES, BackboneAnalysis


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
        "- Accuracy: mean over seeds with a 95% Student-t interval; one seed gives no interval.",
        "- Δ vs baseline (percentage points, 95% interval): paired t-test on the seeds both norms "
        "ran when they share at least 2 (pairing by seed removes the variance a seed shares "
        f"across norms), otherwise Welch's unpaired t-test. Tests used here: {used}.",
        "- p (Holm): Holm-corrected across the comparisons with the baseline on each backbone; a "
        "verdict of better or worse needs a corrected p ≤ α, otherwise no significant difference.",
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
        "of baseline comparisons tested on the backbone: Holm's first threshold, which the "
        "verdict must pass when a single norm differs, so the verdicts' power is at least this. "
        "The power line under each table does the same with the pooled SD of the paired "
        "differences, and gives the seeds a 1 pp difference would need. The SDs are estimated "
        "from few seeds: read these figures as indicative.",
        "- Rank agreement (when the grid sweeps an extra key): Kendall's τ-b between the norms' "
        "rankings by mean accuracy at two values of the key, with a 95% percentile bootstrap "
        f"interval over seeds ({BOOTSTRAP_RESAMPLES} resamples, each (value, norm) cell's "
        "seeds redrawn with replacement independently, fixed generator seed).",
        "- Across backbones: average rank by mean accuracy and a Friedman test on a complete "
        "norms × backbones table.",
        "- Failed runs (survivorship): the tests and letters above use ok runs only, so a norm "
        "whose seeds fail (a diverged loss, a crash) would look as good as its survivors. Under "
        "each table, ok / attempted counts every run that started (ok or failed; skipped and "
        "interrupted ones did not decide their outcome), and the norms are ranked again with "
        "each failed run counted at chance accuracy (1 / classes), beside the ok-only mean.",
        "",
    ]
