"""Privacy accounting: calibrate DP-SGD's noise so the whole run spends the target epsilon.

Opacus' ``get_noise_multiplier`` calibrates a run made of DP-SGD steps alone. A run here may
also release DP statistics (a norm that reads private data before training), so the search
below composes every cost of the run in one accountant history, ``[(sigma, q, steps), *extra
charges]``, and bisects on the DP-SGD noise multiplier. The epsilon reported after a run
(`epsilon_spent`) is computed the same way from what the run actually did (steps taken,
charges made).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opacus.accountants import PRVAccountant, RDPAccountant

from bench.errors import PrivacyError

History = Sequence[tuple[float, float, int]]
ACCOUNTANTS = ("prv", "rdp")
#: Calibrate to an epsilon in [target * (1 - TOLERANCE), target].
TOLERANCE = 0.005
#: Smallest noise multiplier calibrated to. Below it PRV takes minutes per evaluation and stops
#: being monotone in sigma (an epsilon=1000 target gave 710 at sigma 0.097), and such a budget
#: protects next to nothing, so the target is refused instead.
SIGMA_FLOOR = 0.3


@dataclass(frozen=True)
class EpsilonResult:
    """Epsilon of a history under one accountant.

    Attributes:
        epsilon: The value (an upper bound for PRV).
        accountant: The accountant that produced it (``rdp`` when PRV fell back).
        note: Why a fallback happened, else empty.
    """

    epsilon: float
    accountant: str
    note: str = ""


def epsilon(history: History, delta: float, accountant: str = "prv") -> EpsilonResult:
    """Epsilon spent by ``history`` at ``delta``; PRV falls back to RDP when it cannot answer."""
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; allowed: {', '.join(ACCOUNTANTS)}")
    history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    if not history:
        return EpsilonResult(0.0, accountant)
    if accountant == "prv":
        try:
            acc = PRVAccountant()
            acc.history = list(history)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = acc.get_epsilon(delta)
            if math.isfinite(value) and value > 0:
                return EpsilonResult(float(value), "prv")
            reason = f"PRV returned {value}"
        except (ValueError, RuntimeError, OverflowError, MemoryError) as err:
            reason = f"PRV failed ({type(err).__name__}: {err})"
        rdp = epsilon(history, delta, "rdp")
        return EpsilonResult(rdp.epsilon, "rdp", f"{reason}; fell back to RDP")
    acc = RDPAccountant()
    acc.history = list(history)
    return EpsilonResult(float(acc.get_epsilon(delta)), "rdp")


@dataclass(frozen=True)
class Calibration:
    """The DP-SGD noise multiplier that makes the whole run spend the target epsilon.

    Attributes:
        noise_multiplier: DP-SGD's sigma.
        sample_rate: Poisson sampling rate q = B / N.
        steps: DP-SGD steps.
        extra: Other charges of the run (e.g. DP statistics) as history entries.
        accountant: The one accountant the whole search used, and the run reports under:
            the requested one, or ``rdp`` when PRV failed anywhere during the search.
        epsilon: Epsilon of the full planned history under that accountant.
        epsilon_by_accountant: The same history under every accountant, for reporting.
        note: Why the accountant differs from the requested one, else empty.
        requested: The accountant the suite asked for.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    extra: tuple[tuple[float, float, int], ...]
    accountant: str
    epsilon: float
    epsilon_by_accountant: dict[str, float | None] = field(default_factory=dict)
    note: str = ""
    requested: str = ""

    def history(self, steps_done: int | None = None) -> list[tuple[float, float, int]]:
        """The accountant history after ``steps_done`` DP-SGD steps (all planned by default)."""
        n = self.steps if steps_done is None else steps_done
        return [*self.extra, (self.noise_multiplier, self.sample_rate, n)]


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    extra: History = (),
    accountant: str = "prv",
) -> Calibration:
    """Bisect on sigma until the full history spends between (1 - TOLERANCE) and 1 x target.

    Memoised: the cells of a sweep share their privacy plan, and a PRV bisection takes seconds.

    Raises:
        PrivacyError: When even the extra charges alone exceed the target, or no sigma below
            1e4 reaches it.
    """
    extra = tuple((float(s), float(q), int(n)) for s, q, n in extra)
    return _calibrate(
        _Question(
            float(target_epsilon), float(delta), float(sample_rate), int(steps), extra, accountant
        )
    )


@dataclass(frozen=True)
class _Question:
    """What one calibration asks: the run's privacy plan and the one accountant to answer it.

    Hashable, so that `_calibrate` memoises on it.
    """

    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    extra: tuple[tuple[float, float, int], ...]
    accountant: str

    def eps_at(self, sigma: float) -> float:
        """Epsilon of the full history at DP-SGD noise ``sigma``.

        Raises:
            _AccountantFailed: When the accountant fell back rather than answer itself.
        """
        history = [*self.extra, (sigma, self.sample_rate, self.steps)]
        result = epsilon(history, self.delta, self.accountant)
        if result.accountant != self.accountant:
            raise _AccountantFailed(result.note)
        return result.epsilon


@functools.lru_cache(maxsize=256)
def _calibrate(question: _Question) -> Calibration:
    if not (0 < question.sample_rate <= 1) or question.steps < 1:
        raise PrivacyError(
            "sample rate must be in (0, 1] and steps >= 1, "
            f"got q={question.sample_rate}, steps={question.steps}"
        )
    if question.accountant != "rdp":
        # One accountant per run: if PRV cannot answer anywhere on the way, the whole search
        # is redone with RDP (a sigma accepted on PRV's value would exceed the target under
        # RDP), and the run reports under RDP too.
        try:
            return _search(question)
        except _AccountantFailed as failed:
            rdp = _calibrate(dataclasses.replace(question, accountant="rdp"))
            reason = str(failed).split(";")[0]
            return dataclasses.replace(
                rdp,
                note=f"{reason}; calibrated and reported with RDP",
                requested=question.accountant,
            )
    return _search(question)


def _only(history: History, delta: float, accountant: str) -> float | None:
    """Epsilon under exactly this accountant, or None where it cannot answer (no fallback)."""
    result = epsilon(history, delta, accountant)
    return result.epsilon if result.accountant == accountant else None


class _AccountantFailed(Exception):
    """PRV could not answer during a calibration (the message says why)."""


def _search(question: _Question) -> Calibration:
    """Bracket and bisect sigma under the question's one accountant (raises if it falls back)."""
    if question.extra:
        _check_other_costs(question)
    lo, hi = _bracket(question)
    sigma = _bisect(lo, hi, question.target_epsilon, question.eps_at)
    history = [*question.extra, (sigma, question.sample_rate, question.steps)]
    final = question.eps_at(sigma)
    by_acc = {
        a: final if a == question.accountant else _only(history, question.delta, a)
        for a in ACCOUNTANTS
    }
    return Calibration(
        noise_multiplier=sigma,
        sample_rate=question.sample_rate,
        steps=question.steps,
        extra=question.extra,
        accountant=question.accountant,
        epsilon=final,
        epsilon_by_accountant=by_acc,
        requested=question.accountant,
    )


def _check_other_costs(question: _Question) -> None:
    """Refuse a run whose charges besides DP-SGD already spend the whole target."""
    alone = epsilon(question.extra, question.delta, question.accountant)
    if alone.accountant != question.accountant:
        raise _AccountantFailed(alone.note)
    base = alone.epsilon
    if base >= question.target_epsilon:
        raise PrivacyError(
            f"the run's other privacy costs alone spend epsilon={base:.3g}, "
            f"above the target {question.target_epsilon}; lower them (e.g. a larger "
            f"noise multiplier for the norm's statistics)"
        )


def _bracket(question: _Question) -> tuple[float, float]:
    """``(lo, hi)`` with ``eps_at(lo) > target >= eps_at(hi)``."""
    target, q, steps = question.target_epsilon, question.sample_rate, question.steps
    if question.accountant == "rdp":  # cheap at any sigma: bracket from 1 by doubling and halving
        start, factor = 1.0, 2.0
    else:
        # PRV is slow far from the answer (minutes per evaluation at small sigma), and RDP's
        # epsilon bounds the same run from above, so its sigma is a close upper guess: bracket
        # PRV around it in small steps.
        start = _calibrate(dataclasses.replace(question, accountant="rdp")).noise_multiplier
        factor = 1.25
    lo, hi = max(start / factor, SIGMA_FLOOR), start
    while question.eps_at(hi) > target:
        lo, hi = hi, hi * factor
        if hi > 1e4:
            raise PrivacyError(
                f"no noise multiplier below 1e4 reaches epsilon={target} "
                f"with q={q:.4g}, {steps} steps"
            )
    while question.eps_at(lo) <= target:
        if lo <= SIGMA_FLOOR:
            raise PrivacyError(
                f"epsilon={target} needs a noise multiplier below {SIGMA_FLOOR} "
                f"(q={q:.4g}, {steps} steps), where the accountants are slow and "
                "unreliable and the run is hardly private; allowed: an epsilon reached at "
                f"noise multiplier >= {SIGMA_FLOOR}, or a non-private run"
            )
        hi, lo = lo, max(lo / factor, SIGMA_FLOOR)
    return lo, hi


def _bisect(lo: float, hi: float, target_epsilon: float, eps_at: Callable[[float], float]) -> float:
    """The smallest sigma found in ``[lo, hi]`` whose epsilon is within the tolerance below the
    target (the upper end of the final interval: it never overspends)."""
    for _ in range(100):
        mid = (lo + hi) / 2
        eps_mid = eps_at(mid)
        if eps_mid > target_epsilon:
            lo = mid
        else:
            hi = mid
            if eps_mid >= target_epsilon * (1 - TOLERANCE):
                break
    return hi


def merged_history(history: History) -> list[tuple[float, float, int]]:
    """An accountant history with empty entries dropped and consecutive equal (sigma, q)
    entries summed, so that two histories of the same releases compare equal."""
    out: list[tuple[float, float, int]] = []
    for sigma, q, n in history:
        if n <= 0:
            continue
        if out and out[-1][:2] == (float(sigma), float(q)):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(n))
        else:
            out.append((float(sigma), float(q), int(n)))
    return out


@dataclass(frozen=True)
class Spent:
    """Epsilon a run spent.

    Attributes:
        epsilon: The value under `accountant`.
        by_accountant: The value under every accountant (None where one cannot answer).
        accountant: The accountant reported: the calibration's, or ``rdp`` where PRV answered
            for the planned history but not for the one run.
        note: Why the accountant differs from the requested one, else empty.
    """

    epsilon: float
    by_accountant: dict[str, float | None]
    accountant: str
    note: str


def epsilon_spent(calibration: Calibration, taken: History, delta: float) -> Spent:
    """Epsilon spent by the DP-SGD steps ``taken`` and the calibration's other charges, under the
    one accountant the noise was calibrated with, the others beside it.

    A run that did what was planned reports the calibration's own figures, computed once.
    """
    history = merged_history([*calibration.extra, *taken])
    if history == merged_history(calibration.history()):
        by_acc = dict(calibration.epsilon_by_accountant)
    else:
        by_acc = {a: _only(history, delta, a) for a in ACCOUNTANTS}
    accountant, note = calibration.accountant, calibration.note
    if by_acc.get(accountant) is None:
        # PRV answered for the planned history but not for the one run: the RDP bound holds.
        accountant = "rdp"
        note = "; ".join(filter(None, [note, "PRV failed on the steps taken; reported with RDP"]))
    return Spent(by_acc[accountant], by_acc, accountant, note)
