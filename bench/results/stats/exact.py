"""Exact permutation tests: the paired sign-flip test and the Friedman test by enumeration."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations

import numpy as np

#: Most pairs the sign-flip test enumerates (2**n sign patterns); above it no exact p is given.
MAX_SIGN_FLIP_PAIRS = 20
#: Most rank arrangements the exact Friedman test enumerates; above it, a Monte Carlo estimate.
MAX_ENUMERATION = 2_000_000
#: Draws of the Monte Carlo Friedman test, and the seed of its generator (fixed: same records,
#: same report).
MONTE_CARLO_DRAWS = 100_000
PERMUTATION_SEED = 0
#: Names of the Friedman p-value's method, as reports print them.
ENUMERATED = "exact (enumeration)"
MONTE_CARLO = "Monte Carlo permutation"
# Relative slack when comparing a permuted statistic with the observed one: floating sums of
# the same numbers in another order must count as equal.
_SLACK = 1e-9


def sign_flip_p(differences: Sequence[float]) -> float | None:
    """Exact two-sided p-value of the paired sign-flip (permutation) test of a zero mean.

    Under the null that each per-seed difference is as likely positive as negative (symmetric
    about 0, no normality assumed), every one of the 2**n sign patterns is equally likely; the
    p-value is the share of patterns whose ``|sum|`` is at least the observed one. The
    smallest p it can give is 2 / 2**n (0.0625 with 5 seeds), which is why a t-test's small p
    with few seeds rests on normality.

    Args:
        differences: The paired differences, one per seed.

    Returns:
        The p-value, or None with no difference or more than ``MAX_SIGN_FLIP_PAIRS``.
    """
    d = np.asarray(differences, dtype=float)
    n = int(d.size)
    if n == 0 or n > MAX_SIGN_FLIP_PAIRS:
        return None
    signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
    sums = np.abs(signs @ d)
    observed = abs(float(d.sum()))
    return float(np.mean(sums >= observed - _SLACK * max(1.0, observed)))


@dataclass(frozen=True)
class PermutationP:
    """A permutation p-value and how it was found.

    Attributes:
        pvalue: The p-value.
        method: ``ENUMERATED`` or ``MONTE_CARLO``.
        count: Arrangements enumerated, or draws made.
    """

    pvalue: float
    method: str
    count: int


def _block_ranks(block: Sequence[float]) -> np.ndarray:
    """Ranks within one block, 1 = smallest, ties sharing their average rank."""
    values = np.asarray(block, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(1, values.size + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def friedman_permutation_p(blocks: Sequence[Sequence[float]]) -> PermutationP:
    """The Friedman test's p-value from the permutation distribution of its statistic.

    Under the null every arrangement of each block's ranks over the treatments is equally
    likely. Friedman's statistic (tie-corrected or not) is, for given blocks, an increasing
    function of the sum of the squared rank sums, so the p-value is the share of arrangements
    whose sum of squared rank sums is at least the observed one. Relabelling the treatments in
    every block at once leaves that sum unchanged, so the first block is held fixed and the
    others' distinct arrangements enumerated when there are at most ``MAX_ENUMERATION``
    combinations (8 norms on 2 blocks: 40,320); otherwise ``MONTE_CARLO_DRAWS`` random
    arrangements are drawn with a fixed seed and p = (1 + hits) / (1 + draws).

    Args:
        blocks: One row per block (backbone, setting), one value per treatment (norm), in the
            same treatment order in every row; at least 2 rows of at least 2 values.

    Returns:
        The p-value with its method.
    """
    ranks = [_block_ranks(b) for b in blocks]
    observed = float((np.sum(ranks, axis=0) ** 2).sum())
    threshold = observed - _SLACK * observed
    arrangements = [np.array(sorted(set(permutations(r.tolist())))) for r in ranks[1:]]
    total = math.prod(len(a) for a in arrangements)
    if total <= MAX_ENUMERATION:
        sums = ranks[0][None, :]
        for arranged in arrangements:
            sums = (sums[:, None, :] + arranged[None, :, :]).reshape(-1, ranks[0].size)
        return PermutationP(float(np.mean((sums**2).sum(1) >= threshold)), ENUMERATED, total)
    rng = np.random.default_rng(PERMUTATION_SEED)
    sums = np.tile(ranks[0], (MONTE_CARLO_DRAWS, 1))
    for r in ranks[1:]:
        sums = sums + rng.permuted(np.tile(r, (MONTE_CARLO_DRAWS, 1)), axis=1)
    hits = int(((sums**2).sum(1) >= threshold).sum())
    return PermutationP((1 + hits) / (1 + MONTE_CARLO_DRAWS), MONTE_CARLO, MONTE_CARLO_DRAWS)
