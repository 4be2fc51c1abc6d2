"""The compact table under a backbone's main table: how firm each verdict against the baseline
is (the exact sign-flip p, equivalence by TOST, the graded evidence)."""

from __future__ import annotations

from bench.results.leaderboard.columns import drop_empty
from bench.results.leaderboard.graded import equivalence_text, evidence_text, exact_p_text
from bench.results.leaderboard.markdown import code, pp_text, table
from bench.results.stats import BackboneAnalysis


def evidence_lines(analysis: BackboneAnalysis, alpha: float, rope: float) -> list[str]:
    """One row per norm compared with the baseline: the columns a reader checks after the
    verdict, kept out of the main table so that it stays narrow; empty when none was compared.

    Args:
        analysis: The table's statistics.
        alpha: Family-wise significance level (TOST's level per comparison).
        rope: Half-width of the region of practical equivalence (a fraction).
    """
    compared = [r for r in analysis.results if r.vs_baseline is not None and r.p_holm is not None]
    if not compared:
        return []
    headers = [
        "norm",
        "sign-flip p (Holm)",
        f"equivalence (TOST, ±{pp_text(rope)} pp)",
        f"P(Δ < −{pp_text(rope)} / within / > +{pp_text(rope)} pp)",
    ]
    rows = [
        [code(r.norm), exact_p_text(r), equivalence_text(r, alpha), evidence_text(r)]
        for r in compared
    ]
    headers, rows, _ = drop_empty(headers, rows, keep=1)
    return [
        f"How firm each verdict against `{analysis.baseline}` is (the Methods section says how "
        "each column is computed):",
        "",
        table(rows, headers),
        "",
    ]
