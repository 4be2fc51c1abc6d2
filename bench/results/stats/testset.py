"""Test-set uncertainty: a paired difference's interval resampling seeds and test examples jointly.

The seeds-only intervals of the leaderboard treat each run's accuracy as exact, but it is a mean
over a finite test set (10,000 CIFAR-10 images: a standard error of about 0.5 pp per accuracy),
and two norms scored on the same images share that set's sampling error. This two-level
bootstrap draws, in each replicate, the seeds with replacement (the same seeds for both norms:
the pairing) and the test examples with replacement (the same examples for every run), and
takes the mean over the drawn seeds of the difference of the two runs' accuracies on the drawn
examples. Its percentile interval covers both sources of variation (Davison and Hinkley 1997,
ch. 2.4, on resampling the units of each level of a hierarchy).

Written here rather than with `scipy.stats.bootstrap`: that resamples one set of observations
(or several independently), not two crossed levels with a shared index.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np

#: Bootstrap replicates and the generator's fixed seed (the report is deterministic).
RESAMPLES = 2000
GENERATOR_SEED = 0
#: Replicates drawn at once (bounds memory: CHUNK x examples integers).
_CHUNK = 100


@dataclass(frozen=True)
class JointInterval:
    """A paired difference's mean and its seeds x test-examples percentile interval.

    Attributes:
        mean: Mean over the common seeds of the runs' accuracy differences (a fraction).
        low: Lower percentile end (a fraction).
        high: Upper percentile end.
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
    resamples: int = RESAMPLES,
) -> JointInterval | None:
    """The interval of the mean paired difference ``ours - theirs``.

    Args:
        ours: Per seed, a run's per-example score on the test set (1 right, 0 wrong; a failed
            run counted at chance gives every example 1 / classes).
        theirs: The same for the other norm; the same test examples in the same order.
        confidence: Two-sided level of the percentile interval.
        resamples: Bootstrap replicates.

    Returns:
        None when fewer than 2 seeds are shared (no seed variation to resample) or the runs
        scored different numbers of examples.
    """
    seeds = sorted(set(ours) & set(theirs), key=repr)
    if len(seeds) < 2:
        return None
    diffs = np.stack([np.asarray(ours[s], float) - np.asarray(theirs[s], float) for s in seeds])
    if diffs.ndim != 2 or any(len(ours[s]) != len(theirs[s]) for s in seeds):
        return None
    n_seeds, n = diffs.shape
    rng = np.random.default_rng(GENERATOR_SEED)
    replicates = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        # Each replicate's example weights: how often each example is drawn, over n.
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=size) / n
        per_seed = weights @ diffs.T  # (size, seeds): each seed's difference on the draw
        drawn = rng.integers(0, n_seeds, size=(size, n_seeds))
        replicates[start : start + size] = np.take_along_axis(per_seed, drawn, axis=1).mean(1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return JointInterval(float(diffs.mean()), float(low), float(high), n_seeds, n)
