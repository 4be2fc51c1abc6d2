"""Graded evidence beside a verdict: the posterior mass beyond a region of practical
equivalence (ROPE), and the two one-sided tests (TOST) of equivalence within it."""

from __future__ import annotations

from dataclasses import dataclass

from scipy import stats as sps

from bench.results.stats.descriptive import ZERO_SD
from bench.results.stats.significance import Comparison

#: Default half-width of the region of practical equivalence: 1 percentage point.
DEFAULT_ROPE = 0.01


@dataclass(frozen=True)
class Evidence:
    """How much a comparison's difference is practically below, inside or above the ROPE.

    Attributes:
        rope: Half-width of the region of practical equivalence (a fraction).
        below: Posterior probability that the true difference is below ``-rope``.
        inside: Posterior probability that it lies in ``[-rope, rope]``.
        above: Posterior probability that it is above ``rope``.
        tost_p: p-value of the two one-sided tests of ``|difference| >= rope`` (the larger of
            the two one-sided p-values); small means equivalent within the ROPE.
    """

    rope: float
    below: float
    inside: float
    above: float
    tost_p: float

    def equivalent(self, alpha: float) -> bool:
        """Whether TOST shows the difference within the ROPE at level ``alpha``."""
        return self.tost_p <= alpha


def rope_evidence(comparison: Comparison, rope: float = DEFAULT_ROPE) -> Evidence | None:
    """The posterior mass below, inside and above the ROPE, and the TOST p-value.

    The Bayesian paired comparison of Benavoli et al. (JMLR 18, 2017) with their
    non-informative prior: given the per-seed differences' mean ``d``, standard error ``se``
    and ``df`` degrees of freedom, the posterior of the true mean difference is Student-t with
    ``df`` degrees of freedom, located at ``d`` and scaled by ``se`` (the same normal model as
    the t-test, so it inherits its assumption; for a Welch comparison, the Welch-Satterthwaite
    df, an approximation). TOST (Schuirmann 1987) uses the same t: p = max(P(T >= (d + rope) /
    se), P(T <= (d - rope) / se)) under the two boundary nulls; its 1 - 2α interval lies
    inside the ROPE exactly when p <= α. With zero spread the posterior is a point at ``d``.

    Args:
        comparison: A tested comparison (``diff``, ``se``, ``df`` set).
        rope: Half-width of the region of practical equivalence, as a fraction.

    Returns:
        The evidence, or None when the comparison was not tested.
    """
    if not comparison.tested or comparison.diff is None or comparison.se is None:
        return None
    d, se = comparison.diff, comparison.se
    if se < ZERO_SD or comparison.df is None:
        below, above = float(d < -rope), float(d > rope)
        return Evidence(rope, below, 1.0 - below - above, above, 1.0 - float(abs(d) < rope))
    t = sps.t(comparison.df, loc=d, scale=se)
    below, above = float(t.cdf(-rope)), float(t.sf(rope))
    tost = max(
        float(sps.t.sf((d + rope) / se, comparison.df)),
        float(sps.t.cdf((d - rope) / se, comparison.df)),
    )
    return Evidence(rope, below, max(0.0, 1.0 - below - above), above, tost)
