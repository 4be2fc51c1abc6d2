"""Rankings across settings: average ranks, the Friedman test, Kendall's tau with a bootstrap."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.results.stats.descriptive import Seeds, values_of
from bench.results.stats.exact import PermutationP, friedman_permutation_p


@dataclass(frozen=True)
class AverageRank:
    """A norm's rank by mean accuracy, averaged over backbones.

    Attributes:
        rank: Average rank (1 = most accurate; ties within a backbone share the average rank).
        n_backbones: Number of backbones the average is over.
    """

    rank: float
    n_backbones: int


def average_ranks(means: Mapping[str, Mapping[str, float]]) -> dict[str, AverageRank]:
    """Average rank of each norm across backbones.

    Within each backbone the norms that have a mean are ranked by it (1 = highest accuracy, tied
    means get the average of their ranks); each norm's ranks are then averaged over the backbones
    where it has a mean. A norm missing on some backbones is ranked among fewer norms there, so
    compare averages over the same number of backbones.

    Args:
        means: Mean accuracy per norm, per backbone (``means[backbone][norm]``).

    Returns:
        The average rank of each norm that appears anywhere, keyed by norm.
    """
    collected: dict[str, list[float]] = {}
    for backbone in sorted(means):
        norms = sorted(means[backbone])
        if not norms:
            continue
        ranks = sps.rankdata([-means[backbone][norm] for norm in norms], method="average")
        for norm, rank in zip(norms, ranks, strict=True):
            collected.setdefault(norm, []).append(float(rank))
    return {
        norm: AverageRank(float(np.mean(ranks)), len(ranks))
        for norm, ranks in sorted(collected.items())
    }


@dataclass(frozen=True)
class FriedmanResult:
    """The Friedman test across backbones, or why it was not run.

    Attributes:
        statistic: The chi-square statistic; None when not run.
        pvalue: Its p-value; None when not run.
        norms: The norms (treatments) in the test.
        backbones: The backbones (blocks) in the test.
        reason: Why the test was not run, else None.
        exact: The permutation p-value of the same statistic (see
            :func:`~bench.results.stats.exact.friedman_permutation_p`); None when not run.
    """

    statistic: float | None
    pvalue: float | None
    norms: tuple[str, ...]
    backbones: tuple[str, ...]
    reason: str | None = None
    exact: PermutationP | None = None

    @property
    def ran(self) -> bool:
        """Whether the test was run."""
        return self.reason is None


def friedman(means: Mapping[str, Mapping[str, float]], unit: str = "backbone") -> FriedmanResult:
    """Friedman test of "all norms rank alike across backbones" (Demšar, JMLR 2006).

    Blocks are backbones, treatments are norms, the observation is a cell's mean accuracy. The
    test needs a complete table (every norm on every block), at least 3 norms (scipy's
    ``friedmanchisquare`` needs 3 groups) and at least 2 blocks. When some cells are missing,
    the larger (in cells) of two complete tables is used: all norms over the backbones that
    have them all, or all backbones over the norms that every backbone has (ties: more
    backbones). The chi-square approximation is rough with few blocks (8 norms on 2 blocks: 0.10
    where the exact p is 0.029), so the permutation p-value is given beside it and is the one
    to read.

    Args:
        means: Mean accuracy per norm, per backbone (``means[backbone][norm]``); the blocks may
            be other settings, such as datasets.
        unit: What a block is, as the reason a test was not run names it ("dataset").

    Returns:
        The statistic and p-value with the norms and backbones used, or the reason it was not run.
    """
    backbones = sorted(b for b in means if means[b])
    norms = sorted({norm for b in backbones for norm in means[b]})
    full_blocks = [b for b in backbones if all(norm in means[b] for norm in norms)]
    shared_norms = [norm for norm in norms if all(norm in means[b] for b in backbones)]
    candidates = [(norms, full_blocks), (shared_norms, backbones)]
    usable = [(n, b) for n, b in candidates if len(n) >= 3 and len(b) >= 2]
    if not usable:
        if len(backbones) < 2:
            reason = f"needs >= 2 {unit}s with ok runs (have {len(backbones)})"
        elif len(norms) < 3:
            reason = f"needs >= 3 norms (have {len(norms)})"
        else:
            reason = (
                f"needs >= 3 norms with ok runs on >= 2 common {unit}s (all {len(norms)} norms "
                f"on {len(full_blocks)} {unit}(s); {len(shared_norms)} norm(s) on all "
                f"{len(backbones)})"
            )
        return FriedmanResult(None, None, tuple(norms), tuple(backbones), reason)
    use_norms, use_blocks = max(usable, key=lambda nb: (len(nb[0]) * len(nb[1]), len(nb[1])))
    # The statistic divides by the tie correction, which is zero when every block is all ties.
    if all(len({means[b][norm] for norm in use_norms}) == 1 for b in use_blocks):
        return FriedmanResult(
            None, None, tuple(use_norms), tuple(use_blocks), f"all norms tie on every {unit}"
        )
    samples = [[means[b][norm] for b in use_blocks] for norm in use_norms]
    result = sps.friedmanchisquare(*samples)
    exact = friedman_permutation_p([[means[b][norm] for norm in use_norms] for b in use_blocks])
    return FriedmanResult(
        float(result.statistic),
        float(result.pvalue),
        tuple(use_norms),
        tuple(use_blocks),
        exact=exact,
    )


@dataclass(frozen=True)
class RankAgreement:
    """Kendall's tau-b between two settings' norm rankings, with a bootstrap interval.

    Attributes:
        tau: Kendall's tau-b between the norms' mean accuracies in the two settings (1: same
            order, -1: reversed); None when not computed or undefined (all means tie).
        low: Lower end of the percentile bootstrap interval, or None.
        high: Upper end, or None.
        norms: The norms ranked (those with ok runs in both settings), sorted by name.
        n_resamples: Bootstrap resamples drawn.
        confidence: Confidence level of the interval.
        reason: Why tau was not computed, else None.
    """

    tau: float | None
    low: float | None
    high: float | None
    norms: tuple[str, ...]
    n_resamples: int
    confidence: float
    reason: str | None = None


#: Resamples of the rank-agreement bootstrap, and the seed of its generator (fixed, so the same
#: records give the same report).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between the last axes of ``x`` and ``y``, vectorised over the others.

    ``sum(sign(x_i - x_j) * sign(y_i - y_j)) / sqrt(sum|sign(x_i - x_j)| * sum|sign(y_i - y_j)|)``
    over pairs i < j: concordant minus discordant pairs over the geometric mean of the pairs
    untied in each, which is tau-b (``scipy.stats.kendalltau``'s default). nan where either
    side is all ties.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(x.shape[-1], 1)
    sx, sy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    denominator = np.sqrt(np.abs(sx).sum(-1) * np.abs(sy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sx * sy).sum(-1) / denominator, np.nan)


def rank_agreement(
    first: Mapping[str, Seeds],
    second: Mapping[str, Seeds],
    *,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> RankAgreement:
    """Kendall's tau-b between the norm rankings of two settings, with a bootstrap interval.

    The point estimate is tau-b between the norms' mean accuracies in the two settings. The
    interval is a percentile bootstrap over seeds drawn jointly: a seed fixes the data order
    and noise streams of every cell it ran, so cells that share seeds are correlated, and
    resampling each cell on its own would treat them as independent. Each resample draws, with
    replacement, as many seeds as the union of the cells' seeds holds, from that union; every
    cell's mean is recomputed over the drawn seeds it ran (with their multiplicities), and
    tau-b from those means. The interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles of the resampled taus (resamples where tau is
    undefined, or where some cell drew none of its seeds, are dropped). Draws are
    ``numpy.random.default_rng(seed).integers(0, S, size=(n_resamples, S))`` over the union's
    S seeds in sorted order. With 2-3 seeds the bootstrap sees few distinct means, so the
    interval is rough.

    Args:
        first: Accuracy per seed for each norm in the first setting.
        second: The same in the second setting.
        confidence: Confidence level of the interval.
        n_resamples: Bootstrap resamples.
        seed: Seed of the resampling generator.

    Returns:
        tau-b and its interval over the norms with values in both settings, or why not.
    """
    norms = tuple(sorted(n for n in first if first[n] and second.get(n)))
    if len(norms) < 3:
        why = f"needs >= 3 norms with ok runs at both values (have {len(norms)})"
        return RankAgreement(None, None, None, norms, n_resamples, confidence, why)
    cells = [[values_of(setting[n]) for n in norms] for setting in (first, second)]
    means = [np.array([v.mean() for v in setting]) for setting in cells]
    tau = float(kendall_tau_b(means[0], means[1]))
    if not math.isfinite(tau):
        why = "undefined: every norm has the same mean in one setting"
        return RankAgreement(None, None, None, norms, n_resamples, confidence, why)
    resampled = _seed_joint_means([first, second], norms, n_resamples, seed)
    taus = kendall_tau_b(resampled[0], resampled[1])
    taus = taus[np.isfinite(taus)]
    if not taus.size:
        return RankAgreement(tau, None, None, norms, n_resamples, confidence)
    tail = 100 * (1 - confidence) / 2
    low, high = (float(q) for q in np.percentile(taus, [tail, 100 - tail]))
    return RankAgreement(tau, low, high, norms, n_resamples, confidence)


def _seed_joint_means(
    settings: list[Mapping[str, Seeds]], norms: tuple[str, ...], n_resamples: int, seed: int
) -> list[np.ndarray]:
    """Per setting, the (n_resamples, norms) cell means over seeds resampled jointly across
    every cell; nan where a cell drew none of its seeds."""
    seeds = sorted({s for setting in settings for n in norms for s in setting[n]}, key=repr)
    draws = np.random.default_rng(seed).integers(0, len(seeds), size=(n_resamples, len(seeds)))
    weights = np.stack([np.bincount(row, minlength=len(seeds)) for row in draws]).astype(float)
    out = []
    for setting in settings:
        values = np.array([[setting[n].get(s, 0.0) for s in seeds] for n in norms]).T
        present = np.array([[float(s in setting[n]) for s in seeds] for n in norms]).T
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((weights @ values) / (weights @ present))
    return out
