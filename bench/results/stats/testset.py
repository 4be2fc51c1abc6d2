"""Test-set uncertainty: a paired difference's interval over seeds and test examples together.

The seeds-only intervals of the leaderboard treat each run's accuracy as exact, but it is a mean
over a finite test set (10,000 CIFAR-10 images: a standard error of about 0.5 pp per accuracy),
and two norms scored on the same images share that set's sampling error. By the law of total
variance, the variance of the mean paired difference D over S seeds and n test examples is the
seeds' part given the test set, estimated by s_seeds² / S (s_seeds: the SD of the per-seed
accuracy differences, the paired t-test's), plus the test set's part, estimated by s_ex² / n
(s_ex: the SD over examples of each example's score difference averaged over the seeds; it
also holds the runs' per-example noise over S, so the sum errs on the wide side). The interval
is ``D ± t(S - 1) * sqrt(s_seeds² / S + s_ex² / n)``: the paired t-interval with the test
set's variance added, so it is never narrower than the seeds-only interval (Miller 2024,
"Adding error bars to evals", arXiv:2411.00640, on paired per-example differences and
clustered standard errors).

Not a two-level percentile bootstrap: with the 2 to 5 seeds of a suite, resampling seeds spans
little more than their range (2 seeds: half the range, where the t-interval is 12.7 standard
errors a side), so it would come out narrower than the seeds-only interval it is meant to widen.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

from bench.results.stats.descriptive import t_quantile


@dataclass(frozen=True)
class JointInterval:
    """A paired difference's mean and its seeds x test-examples t-interval.

    Attributes:
        mean: Mean over the common seeds of the runs' accuracy differences (a fraction).
        low: Lower end of the interval (a fraction).
        high: Upper end.
        seeds: Seeds both norms ran (the pairs).
        examples: Test examples per run.
    """

    mean: float
    low: float
    high: float
    seeds: int
    examples: int


def joint_interval(
    ours: Mapping[Hashable, np.ndarray],
    theirs: Mapping[Hashable, np.ndarray],
    confidence: float = 0.95,
) -> JointInterval | None:
    """The interval of the mean paired difference ``ours - theirs`` (see the module docstring).

    Args:
        ours: Per seed, a run's per-example score on the test set (1 right, 0 wrong; a failed
            run counted at chance gives every example 1 / classes).
        theirs: The same for the other norm; the same test examples in the same order.
        confidence: Two-sided level of the interval.

    Returns:
        None when fewer than 2 seeds are shared (no seed variation to estimate) or the runs
        scored different numbers of examples.
    """
    seeds = sorted(set(ours) & set(theirs), key=repr)
    if len(seeds) < 2 or len({len(ours[s]) for s in seeds} | {len(theirs[s]) for s in seeds}) > 1:
        return None
    diffs = np.stack([np.asarray(ours[s], float) - np.asarray(theirs[s], float) for s in seeds])
    n_seeds, n = diffs.shape
    if n < 2:
        return None
    seeds_var = float(diffs.mean(axis=1).var(ddof=1)) / n_seeds
    examples_var = float(diffs.mean(axis=0).var(ddof=1)) / n
    half = t_quantile(confidence, n_seeds - 1) * math.sqrt(seeds_var + examples_var)
    mean = float(diffs.mean())
    return JointInterval(mean, mean - half, mean + half, n_seeds, n)
