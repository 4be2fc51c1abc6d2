"""Epsilon of a tuned procedure: every tuning run, its noisy validation score, and one final run.

The protocol (`bench.sweep.protocol`) trains a fixed grid of candidates x tuning seeds, releases
every candidate's validation score (the leaderboard's tuning table publishes them all), selects
the best and trains the final run on the whole private set. With a fixed number of runs whose
scores are all published, Papernot and Steinke's bound (ICLR 2022, which needs a random number
of runs and releases only the best) does not apply; what does is plain composition: the
procedure is a sequence of Gaussian and subsampled-Gaussian mechanisms on the private set, so
its epsilon is that of the concatenated accountant history (the selection is post-processing of
released scores and costs nothing). The history is handed to Opacus' accountant (PRV, or RDP),
as each run's own epsilon is (`bench.privacy.epsilon`).

A tuning run's validation score is the number of correct validation examples (sensitivity 1
under adding or removing one example) plus Gaussian noise of std ``tune.score_noise``: one
Gaussian mechanism, Opacus history entry ``(score_noise, 1.0, 1)``, charged in the tuning run's
own epsilon and here. Composing the tuning runs' DP-SGD steps (which read the training part)
with their scores (which read the validation part) over the whole private set bounds the
procedure from above; it does not take the two parts as disjoint.

The bound assumes each run's noise and sampling are independent of every other run's.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.privacy import EpsilonResult, History

#: The method `epsilon_with_tuning` is computed with, as records and reports name it.
METHOD = "composition"
#: What `METHOD` composes, in words (the leaderboard's).
METHOD_TEXT = (
    "composition of every tuning run of the norm's grid point (its DP-SGD steps, its charges "
    "and its noisy validation score) and the final run, in one accountant history"
)


@dataclass(frozen=True)
class ScoreCharge:
    """The privacy cost of releasing a tuning run's validation score with Gaussian noise.

    Duck-types `norms.lifecycle.PrivacyCharge` (``history_entry``, ``as_record``), which the
    plan composes into the run's calibration, without importing torch.

    Attributes:
        noise_multiplier: Std of the noise on the correct count (the count's sensitivity is 1).
        n_val: Validation examples scored.
    """

    noise_multiplier: float
    n_val: int

    @property
    def description(self) -> str:
        """What is released, for the record."""
        return (
            f"validation score: correct count over {self.n_val} examples + N(0, "
            f"{self.noise_multiplier:g}^2), one Gaussian release"
        )

    def history_entry(self) -> tuple[float, float, int]:
        """The ``(noise_multiplier, sample_rate, steps)`` triple Opacus accountants store."""
        return (float(self.noise_multiplier), 1.0, 1)

    def as_record(self) -> dict[str, Any]:
        """The charge as a record's ``privacy_charges`` entry."""
        sigma, q, steps = self.history_entry()
        return {
            "description": self.description,
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps": steps,
        }


def composed(histories: Iterable[History]) -> tuple[tuple[float, float, int], ...]:
    """The histories of several mechanisms as one: entries of equal ``(sigma, q)`` summed
    wherever they come (composition does not depend on order), empty ones dropped, sorted so
    that equal procedures give equal histories."""
    steps: dict[tuple[float, float], int] = {}
    for history in histories:
        for sigma, q, n in history:
            if int(n) > 0:
                key = (float(sigma), float(q))
                steps[key] = steps.get(key, 0) + int(n)
    return tuple((sigma, q, n) for (sigma, q), n in sorted(steps.items()))


def run_history(
    charges: Sequence[Any], noise_multiplier: float, sample_rate: float, steps: int
) -> list[tuple[float, float, int]]:
    """One run's planned history: its charges, then its DP-SGD steps at the noise and sampling
    rate it really runs at (for a TAN simulation: b's, not the target's)."""
    return [*(c.history_entry() for c in charges), (noise_multiplier, sample_rate, steps)]


def epsilon_with_tuning(
    tuning: History, run: History, delta: float, accountant: str
) -> EpsilonResult:
    """Epsilon of the whole procedure: the tuning runs' history composed with one run's.

    Args:
        tuning: Every tuning run the selection read (`composed` of their planned histories).
        run: The final run's history (its charges and the DP-SGD steps it took).
        delta: The delta the epsilon is given at.
        accountant: ``prv`` or ``rdp`` (PRV falls back to RDP, as `bench.privacy.epsilon`).
    """
    return _epsilon(composed([tuning, run]), float(delta), accountant)


@functools.lru_cache(maxsize=64)
def _epsilon(history: tuple, delta: float, accountant: str) -> EpsilonResult:
    """Memoised: the seeds of a grid point compose the same history (PRV takes seconds)."""
    from bench.privacy import epsilon  # Opacus: only when computing, not when planning a cell

    return epsilon(history, delta, accountant)


def group_costs(plans_by_group: Mapping[Any, Sequence[Any]]) -> dict[Any, tuple]:
    """Per grid point, the composed planned history of its tuning runs (`bench.plan.CellPlan`
    each; planned, so a run that failed or stopped early is charged in full)."""
    return {
        group: composed(
            run_history(p.charges, p.noise_multiplier, p.sample_rate, p.steps) for p in plans
        )
        for group, plans in plans_by_group.items()
    }
