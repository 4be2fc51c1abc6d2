"""Intention to treat: every attempted run scored, a failed or collapsed run at chance, and the
failure rate with its exact binomial interval."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from scipy import stats as sps

#: Default collapse threshold: an ok run within 2 percentage points of chance counts as failed.
DEFAULT_COLLAPSE = 0.02


@dataclass(frozen=True)
class FailureRate:
    """Failures among attempted runs, with a Clopper-Pearson interval.

    Attributes:
        failures: Runs that failed or collapsed.
        attempted: Runs that started and decided their outcome (ok or failed).
        low: Lower end of the exact binomial interval of the rate.
        high: Upper end.
        confidence: Confidence level of the interval.
    """

    failures: int
    attempted: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def rate(self) -> float:
        """Failures over attempted runs."""
        return self.failures / self.attempted


def failure_rate(failures: int, attempted: int, confidence: float = 0.95) -> FailureRate | None:
    """The failure rate with its exact (Clopper-Pearson) binomial interval, from
    ``scipy.stats.binomtest``; None when nothing was attempted.

    Clopper-Pearson inverts two one-sided binomial tests, so its coverage is at least the
    nominal level for every true rate; with 5 runs and no failure it still reaches 52 %.
    """
    if attempted < 1:
        return None
    ci = sps.binomtest(failures, attempted).proportion_ci(confidence, method="exact")
    return FailureRate(failures, attempted, float(ci.low), float(ci.high), confidence)


@dataclass(frozen=True)
class Outcomes:
    """One cell's runs under intention to treat.

    Attributes:
        scores: Accuracy per seed with each failed or collapsed run at chance; a failed run's
            own accuracy is never used. Equal to the ok runs' accuracy when chance is unknown.
        collapsed: Seeds of ok runs that ended within the collapse threshold of chance.
        failed: Failed runs (status failed) counted.
        rate: Failures (failed plus collapsed) over attempted runs; None when none attempted.
        chance: Chance accuracy used, or None when unknown (then failed runs are left out of
            ``scores`` and no run is flagged collapsed).
    """

    scores: dict[Hashable, float]
    collapsed: tuple[Hashable, ...]
    failed: int
    rate: FailureRate | None
    chance: float | None


def intention_to_treat(
    ok: Mapping[Hashable, float],
    failed_seeds: Iterable[Hashable],
    chance: float | None,
    collapse: float = DEFAULT_COLLAPSE,
    confidence: float = 0.95,
) -> Outcomes:
    """Score a cell's runs under intention to treat.

    A failed run (a diverged loss, a crash) is scored at chance accuracy: a method that fails
    delivers no model, and keeping only its survivors would reward instability. An ok run
    within ``collapse`` of chance learned nothing either: it is flagged collapsed, counted as a
    failure and also scored at chance, so a seed that collapses with a finite loss and one
    that diverges are treated alike.

    Args:
        ok: Accuracy per seed of the ok runs.
        failed_seeds: The seed of each failed run (a run with no seed is keyed by its place).
            A failed seed that also has an ok run (re-run with ``--retry-failed``) keeps its
            ok run: the records' latest outcome of that run stands.
        chance: Chance accuracy (1 / classes), or None when unknown.
        collapse: Distance from chance (a fraction) within which an ok run counts as collapsed.
        confidence: Confidence level of the failure rate's interval.

    Returns:
        The scores per seed, the collapsed seeds and the failure rate.
    """
    failed = [seed for seed in failed_seeds if seed is None or seed not in ok]
    scores = dict(ok)
    collapsed: list[Hashable] = []
    if chance is not None:
        for seed, acc in ok.items():
            if abs(acc - chance) <= collapse:
                collapsed.append(seed)
                scores[seed] = chance
        for place, seed in enumerate(failed):
            scores[seed if seed is not None else ("failed run", place)] = chance
    rate = failure_rate(len(failed) + len(collapsed), len(ok) + len(failed), confidence)
    return Outcomes(scores, tuple(collapsed), len(failed), rate, chance)
